"""mailsrv's management API in both Stalwart dialects: 0.15 REST under /api and 0.16 JMAP ``urn:stalwart:jmap``.

One server for the module (accounts alice and bob); the queue is paused at the start so queued rows stay
exactly as the tests put them.
"""

from __future__ import annotations

import json
import smtplib
import sqlite3
import ssl
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from mailsrv.server.store.ids import jmap_id
from tests.conftest import ADMIN_PASSWORD, MASTER_PASSWORD, USER_PASSWORD, MailsrvProc, start_mailsrv

STALWART = ["urn:ietf:params:jmap:core", "urn:stalwart:jmap"]


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MailsrvProc]:
    server = start_mailsrv(tmp_path_factory.mktemp("mgmt"), domains=["example.org", "example.net"])
    for name in ("alice", "bob"):  # created through the management API (quicker than the CLI)
        r = requests.post(f"{server.url}/api/principal", auth=server.admin, timeout=10,
                          json={"name": name, "secrets": [USER_PASSWORD], "emails": [f"{name}@example.org"]})
        assert isinstance(r.json()["data"], int)
        server.accounts[name] = USER_PASSWORD
    r = requests.patch(f"{server.url}/api/queue/status/stop", auth=server.admin, timeout=10)
    assert r.json() == {"data": True}
    yield server
    server.stop()


def api(srv: MailsrvProc, method: str, path: str, auth: tuple[str, str] | None = None, **kw: Any) -> requests.Response:
    r = requests.request(method, f"{srv.url}{path}", auth=auth or srv.admin, timeout=15, **kw)
    assert r.status_code < 500, r.text
    return r


def curl(srv: MailsrvProc, *args: str) -> Any:
    """Run the real curl binary the way operators call Stalwart's API; returns the parsed JSON answer."""
    out = subprocess.run(["curl", "-s", "-u", f"admin:{ADMIN_PASSWORD}", *args], capture_output=True, text=True,
                         timeout=30, check=True)
    return json.loads(out.stdout)


def x_call(srv: MailsrvProc, auth: tuple[str, str], *calls: list[Any]) -> list[list[Any]]:
    return srv.jmap(auth, list(calls), using=STALWART)


def db(srv: MailsrvProc) -> sqlite3.Connection:
    conn = sqlite3.connect(srv.data_dir / "mailsrv.sqlite3", timeout=30)
    conn.execute("PRAGMA busy_timeout=30000")
    return conn


# -- accounts as operators create them ---------------------------------------------------------------
def test_curl_account_creation_login_and_impersonation(srv: MailsrvProc) -> None:
    body = json.dumps({"type": "individual", "name": "carol", "secrets": ["carol-pw-1"], "emails": ["carol@example.org"]})
    created = curl(srv, "-X", "POST", f"{srv.url}/api/principal", "-d", body)
    assert isinstance(created["data"], int)
    carol_id = created["data"]
    patched = curl(srv, "-X", "PATCH", f"{srv.url}/api/principal/carol",
                   "-d", '[{"action":"set","field":"roles","value":["admin"]}]')
    assert patched == {"data": None}

    shown = api(srv, "GET", "/api/principal/carol").json()["data"]
    assert shown == {"id": carol_id, "type": "individual", "name": "carol", "emails": ["carol@example.org"],
                     "roles": ["admin"]}

    # carol logs in over JMAP; her accountId is the API id in Stalwart's base32
    session = srv.session("carol", "carol-pw-1")
    assert session["username"] == "carol"
    assert list(session["accounts"]) == [jmap_id(carol_id)]
    assert "urn:stalwart:jmap" in session["capabilities"]
    with db(srv) as conn:
        roles = {r[0] for r in conn.execute("SELECT role FROM mailboxes WHERE account_id=?", (carol_id,))}
    assert roles == {"inbox", "drafts", "sent", "junk", "trash"}

    # being admin, carol impersonates bob with her own password (v0.16 style)
    bob = srv.session("bob%carol", "carol-pw-1")
    assert bob["username"] == "bob"
    bob_id = api(srv, "GET", "/api/principal/bob").json()["data"]["id"]
    assert bob["primaryAccounts"]["urn:ietf:params:jmap:mail"] == jmap_id(bob_id)

    # v0.15 master user
    alice = srv.session("alice%master", MASTER_PASSWORD)
    assert alice["username"] == "alice"

    # a non-admin cannot impersonate, and the master password is not anyone's password
    assert requests.get(f"{srv.url}/jmap/session", auth=("bob%alice", USER_PASSWORD), timeout=10).status_code == 401
    assert requests.get(f"{srv.url}/jmap/session", auth=("alice", MASTER_PASSWORD), timeout=10).status_code == 401


def test_listing_paging_filter_count_fields(srv: MailsrvProc) -> None:
    for i in range(5):
        r = api(srv, "POST", "/api/principal", json={
            "type": "individual", "name": f"list{i}", "description": f"Tenant needle{i % 2} person",
            "secrets": [f"secret-{i}"], "emails": [f"list{i}@example.net"], "quota": 1000 * (i + 1),
        })
        assert isinstance(r.json()["data"], int)

    page = api(srv, "GET", "/api/principal", params={"types": "individual", "filter": "tenant", "limit": 2, "page": 2})
    data = page.json()["data"]
    assert data["total"] == 5
    assert [p["name"] for p in data["items"]] == ["list2", "list3"]
    assert data["items"][0] == {"id": data["items"][0]["id"], "type": "individual", "name": "list2",
                                "description": "Tenant needle0 person", "emails": ["list2@example.net"],
                                "roles": ["user"], "quota": 3000}

    # page 0 and 1 are both the first page; limit 0 is unlimited
    first = api(srv, "GET", "/api/principal", params={"types": "individual", "filter": "tenant", "limit": 2, "page": 0})
    assert [p["name"] for p in first.json()["data"]["items"]] == ["list0", "list1"]
    everything = api(srv, "GET", "/api/principal", params={"filter": "tenant", "limit": 0}).json()["data"]
    assert [p["name"] for p in everything["items"]] == [f"list{i}" for i in range(5)]

    # full-word filter, AND-ed: "needle1" matches list1 and list3 only; "needle" matches no word
    odd = api(srv, "GET", "/api/principal", params={"filter": "needle1 person"}).json()["data"]
    assert [p["name"] for p in odd["items"]] == ["list1", "list3"]
    assert api(srv, "GET", "/api/principal", params={"filter": "needle"}).json()["data"]["total"] == 0
    by_domain = api(srv, "GET", "/api/principal", params={"filter": "example.net", "types": "individual"}).json()
    assert by_domain["data"]["total"] == 5

    # count: only the total
    assert api(srv, "GET", "/api/principal", params={"filter": "tenant", "count": ""}).json() == {
        "data": {"items": [], "total": 5}}

    # fields restricts the keys (id and type always there); secrets are never returned
    only = api(srv, "GET", "/api/principal", params={"filter": "list4", "fields": "name,secrets"}).json()["data"]
    assert only["items"] == [{"id": only["items"][0]["id"], "type": "individual", "name": "list4"}]
    raw = api(srv, "GET", "/api/principal", params={"fields": "secrets,name,emails"}).text
    raw += api(srv, "GET", "/api/principal/list4").text
    assert "secret" not in raw and "$scrypt$" not in raw

    # domains are principals of type domain with a stable id in their own range
    domains = api(srv, "GET", "/api/principal", params={"types": "domain"}).json()["data"]
    assert [d["name"] for d in domains["items"]] == ["example.net", "example.org"]
    net = domains["items"][0]
    assert net["type"] == "domain" and net["members"] == 5 and net["id"] >= 0x80000000
    assert api(srv, "GET", "/api/principal/example.net").json()["data"] == net
    # ordering by name across types
    names = [p["name"] for p in api(srv, "GET", "/api/principal").json()["data"]["items"]]
    assert names == sorted(names, key=str.lower) and "example.org" in names and "alice" in names


def test_get_patch_delete(srv: MailsrvProc) -> None:
    assert api(srv, "POST", "/api/principal", json={"name": "Dave", "secrets": "dave-pw-1",
                                                      "emails": "dave@example.org"}).json()["data"] > 0
    dave = api(srv, "GET", "/api/principal/dave").json()["data"]
    assert dave["name"] == "dave" and dave["type"] == "individual"  # names are lower-cased, type defaults

    changes = [
        {"action": "addItem", "field": "emails", "value": "d.alias@example.org"},
        {"action": "set", "field": "description", "value": "Dave D."},
        {"action": "set", "field": "quota", "value": 5_000_000},
        {"action": "set", "field": "secrets", "value": ["dave-pw-2"]},
    ]
    assert api(srv, "PATCH", "/api/principal/dave", json=changes).json() == {"data": None}
    dave = api(srv, "GET", "/api/principal/dave").json()["data"]
    assert dave["emails"] == ["dave@example.org", "d.alias@example.org"]
    assert dave["description"] == "Dave D." and dave["quota"] == 5_000_000
    assert requests.get(f"{srv.url}/jmap/session", auth=("dave", "dave-pw-1"), timeout=10).status_code == 401
    assert srv.session("dave", "dave-pw-2")["username"] == "dave"

    api(srv, "PATCH", "/api/principal/dave", json=[
        {"action": "removeItem", "field": "emails", "value": "dave@example.org"},
        {"action": "addItem", "field": "secrets", "value": "dave-pw-3"},
        {"action": "removeItem", "field": "secrets", "value": "dave-pw-2"},
        {"action": "set", "field": "name", "value": "david"},
    ])
    assert api(srv, "GET", "/api/principal/dave").json() == {"error": "notFound", "item": "dave"}
    david = api(srv, "GET", "/api/principal/david").json()["data"]
    assert david["emails"] == ["d.alias@example.org"]
    assert srv.session("david", "dave-pw-3")["username"] == "david"
    assert requests.get(f"{srv.url}/jmap/session", auth=("david", "dave-pw-2"), timeout=10).status_code == 401

    # a failing change rolls back the whole PATCH
    r = api(srv, "PATCH", "/api/principal/david", json=[
        {"action": "set", "field": "description", "value": "changed"},
        {"action": "addItem", "field": "emails", "value": "alice@example.org"},
    ])
    assert r.json() == {"error": "fieldAlreadyExists", "field": "emails", "value": "alice@example.org"}
    assert api(srv, "GET", "/api/principal/david").json()["data"]["description"] == "Dave D."

    assert api(srv, "DELETE", "/api/principal/david").json() == {"data": None}
    assert api(srv, "GET", "/api/principal/david").json() == {"error": "notFound", "item": "david"}
    assert requests.get(f"{srv.url}/jmap/session", auth=("david", "dave-pw-3"), timeout=10).status_code == 401

    # domains: create, refuse to delete while in use, delete when empty
    dom_id = api(srv, "POST", "/api/principal", json={"type": "domain", "name": "Example.COM"}).json()["data"]
    assert dom_id >= 0x80000000
    assert api(srv, "GET", "/api/principal/example.com").json()["data"]["id"] == dom_id
    api(srv, "POST", "/api/principal", json={"name": "erin", "emails": ["erin@example.com"]})
    refused = api(srv, "DELETE", "/api/principal/example.com").json()
    assert refused["error"] == "other" and refused["details"] == "Domain has members" and "erin" in refused["reason"]
    api(srv, "DELETE", "/api/principal/erin")
    assert api(srv, "DELETE", "/api/principal/example.com").json() == {"data": None}
    assert api(srv, "GET", "/api/principal/example.com").json()["error"] == "notFound"


def test_error_envelopes(srv: MailsrvProc) -> None:
    post = lambda body: api(srv, "POST", "/api/principal", json=body).json()  # noqa: E731
    assert post({"type": "individual", "secrets": ["x"]}) == {"error": "fieldMissing", "field": "name"}
    assert post({"name": "alice"}) == {"error": "fieldAlreadyExists", "field": "name", "value": "alice"}
    assert post({"name": "example.org"}) == {"error": "fieldAlreadyExists", "field": "name", "value": "example.org"}
    assert post({"name": "frank", "emails": ["bob@example.org"]}) == {
        "error": "fieldAlreadyExists", "field": "emails", "value": "bob@example.org"}
    assert post({"name": "frank", "emails": ["frank@elsewhere.test"]}) == {"error": "notFound", "item": "elsewhere.test"}
    assert post({"name": "frank", "emails": ["not-an-address"]}) == {
        "error": "other", "details": "Invalid email", "reason": "Email address is invalid"}
    assert post({"name": "frank", "roles": ["superpowers"]}) == {"error": "notFound", "item": "superpowers"}
    assert post({"name": "frank", "members": ["alice"]})["error"] == "unsupported"
    assert post({"type": "apiKey", "name": "frank"})["error"] == "unsupported"
    assert post({"name": "fr%ank"})["error"] == "other"
    assert api(srv, "GET", "/api/principal/frank").json() == {"error": "notFound", "item": "frank"}
    assert api(srv, "PATCH", "/api/principal/nobody", json=[]).json() == {"error": "notFound", "item": "nobody"}
    assert api(srv, "DELETE", "/api/principal/nobody").json() == {"error": "notFound", "item": "nobody"}
    assert api(srv, "PATCH", "/api/principal/alice", json=[{"action": "set", "field": "members", "value": ["bob"]}]
               ).json()["error"] == "unsupported"
    assert api(srv, "PATCH", "/api/principal/alice", json=[{"action": "set", "field": "name", "value": "bob"}]
               ).json() == {"error": "fieldAlreadyExists", "field": "name", "value": "bob"}

    # unparsable requests: 400 problem+json, never a 500
    bad_requests: list[tuple[str, str, dict[str, Any]]] = [
        ("POST", "/api/principal", {"data": b"{not json"}),
        ("POST", "/api/principal", {"json": ["a", "list"]}),
        ("POST", "/api/principal", {"json": {"name": 42}}),
        ("POST", "/api/principal", {"json": {"name": "x" * 600}}),
        ("POST", "/api/principal", {"json": {"name": "frank", "quota": "lots"}}),
        ("POST", "/api/principal", {"json": {"name": "frank", "type": "wizard"}}),
        ("POST", "/api/principal", {"json": {"name": "frank", "colour": "blue"}}),
        ("PATCH", "/api/principal/alice", {"json": {"action": "set"}}),
        ("PATCH", "/api/principal/alice", {"json": [{"action": "replace", "field": "description", "value": "x"}]}),
        ("PATCH", "/api/principal/alice", {"json": [{"action": "addItem", "field": "quota", "value": 1}]}),
        ("PATCH", "/api/principal/alice", {"json": [{"action": "set", "field": "hairColour", "value": "x"}]}),
        ("GET", "/api/principal?page=abc", {}),
        ("GET", "/api/principal?limit=-1", {}),
        ("GET", "/api/queue/messages?limit=x", {}),
    ]
    for method, path, kw in bad_requests:
        r = api(srv, method, path, **kw)
        assert r.status_code == 400, (method, path, r.text)
        assert r.headers["Content-Type"].startswith("application/problem+json")
        assert r.json()["title"] == "Invalid parameters"
    assert api(srv, "GET", "/api/principal/alice").json()["data"].get("description") is None  # nothing changed

    for method, path in [("GET", "/api/no-such-thing"), ("PUT", "/api/principal"), ("GET", "/api/queue/messages/abc"),
                         ("GET", "/api/queue/messages/999999"), ("PATCH", "/api/queue/status/pause")]:
        r = api(srv, method, path)
        assert r.status_code == 404 and r.headers["Content-Type"].startswith("application/problem+json"), (path, r.text)


def test_authentication_and_admin_only(srv: MailsrvProc) -> None:
    none = requests.get(f"{srv.url}/api/principal", timeout=10)
    assert none.status_code == 401 and none.headers["WWW-Authenticate"].startswith("Basic")
    wrong = requests.get(f"{srv.url}/api/principal", auth=("admin", "wrong"), timeout=10)
    assert wrong.status_code == 401 and "Basic" in wrong.headers["WWW-Authenticate"]
    for method, path in [("GET", "/api/principal"), ("POST", "/api/principal"), ("DELETE", "/api/principal/bob"),
                         ("GET", "/api/queue/messages"), ("PATCH", "/api/queue/status/start")]:
        r = requests.request(method, f"{srv.url}{path}", auth=("alice", USER_PASSWORD), json={"name": "x"}, timeout=10)
        assert r.status_code == 403, (method, path, r.text)
        assert r.headers["Content-Type"].startswith("application/problem+json")
    assert api(srv, "GET", "/api/principal/bob").json()["data"]["name"] == "bob"  # the DELETE did nothing
    assert api(srv, "GET", "/api/queue/status").json() == {"data": False}  # still paused

    # JMAP management: forbidden for non-admins, unknownMethod without the capability
    out = x_call(srv, ("alice", USER_PASSWORD), ["x:Account/query", {}, "0"], ["x:QueuedMessage/get", {}, "1"])
    assert [r[0] for r in out] == ["error", "error"] and {r[1]["type"] for r in out} == {"forbidden"}
    plain = srv.jmap(srv.admin, [["x:Account/query", {}, "0"]])
    assert plain[0][1]["type"] == "unknownMethod"

    metrics = requests.get(f"{srv.url}/metrics/prometheus", timeout=10).text
    values = {line.split()[0]: int(line.split()[1]) for line in metrics.splitlines() if line and not line.startswith("#")
              and line.split()[0] in ("auth_failed", "security_unauthorized", "jmap_forbidden")}
    assert values["auth_failed"] >= 1 and values["security_unauthorized"] >= 5 and values["jmap_forbidden"] >= 2


# -- v0.16 JMAP management: accounts and domains -----------------------------------------------------
def test_jmap_accounts_and_domains(srv: MailsrvProc) -> None:
    api(srv, "POST", "/api/principal", json={"name": "gina", "secrets": ["gina-pw"], "description": "Gina from sales",
                                              "emails": ["gina@example.net", "sales@example.org"], "quota": 7777,
                                              "roles": ["admin"]})
    gina_id = api(srv, "GET", "/api/principal/gina").json()["data"]["id"]
    out = x_call(srv, srv.admin,
                 ["x:Account/query", {"filter": {"text": "sales"}, "calculateTotal": True}, "q"],
                 ["x:Account/get", {"#ids": {"resultOf": "q", "name": "x:Account/query", "path": "/ids"}}, "g"],
                 ["x:Domain/query", {"filter": {"name": "example.net"}}, "dq"],
                 ["x:Domain/get", {"#ids": {"resultOf": "dq", "name": "x:Domain/query", "path": "/ids"}}, "dg"])
    query, get, dquery, dget = (r[1] for r in out)
    assert [r[0] for r in out] == ["x:Account/query", "x:Account/get", "x:Domain/query", "x:Domain/get"], out
    assert query["ids"] == [jmap_id(gina_id)] and query["total"] == 1 and query["accountId"] is None
    (gina,) = get["list"]
    net = dget["list"][0]
    assert gina == {
        "id": jmap_id(gina_id), "@type": "User", "name": "gina", "domainId": net["id"],
        "emailAddress": "gina@example.net",
        "aliases": {"0": {"enabled": True, "name": "sales", "domainId": gina["aliases"]["0"]["domainId"],
                          "description": None}},
        "description": "Gina from sales", "quotas": {"maxDiskQuota": 7777}, "usedDiskQuota": 0,
        "roles": {"@type": "Admin"}, "createdAt": gina["createdAt"], "memberGroupIds": {}, "memberTenantId": None,
    }
    assert gina["createdAt"].endswith("Z") and "secret" not in json.dumps(out).lower()
    assert dquery["ids"] == [net["id"]]
    assert net["name"] == "example.net" and net["isEnabled"] is True and net["id"] == jmap_id(
        api(srv, "GET", "/api/principal/example.net").json()["data"]["id"])

    # sorting, paging, properties; an admin account's calls echo its own account id
    sorted_q = x_call(srv, ("gina", "gina-pw"), ["x:Account/query", {
        "sort": [{"property": "name", "isAscending": False}], "position": 1, "limit": 2, "calculateTotal": True}, "0"])[0][1]
    everyone = x_call(srv, srv.admin, ["x:Account/get", {"properties": ["name"]}, "0"])[0][1]["list"]
    by_name = sorted(everyone, key=lambda a: a["name"], reverse=True)
    assert sorted_q["accountId"] == jmap_id(gina_id)
    assert sorted_q["ids"] == [a["id"] for a in by_name[1:3]] and sorted_q["total"] == len(everyone)
    assert all(set(a) == {"id", "name"} for a in everyone)

    errors = x_call(srv, srv.admin,
                    ["x:Account/query", {"filter": {"operator": "OR", "conditions": []}}, "0"],
                    ["x:Account/query", {"filter": {"colour": "blue"}}, "1"],
                    ["x:Account/query", {"sort": [{"property": "quota"}]}, "2"],
                    ["x:Account/get", {"properties": ["password"]}, "3"],
                    ["x:Account/get", {"ids": ["zzzzzz", jmap_id(gina_id)], "accountId": 7}, "4"],
                    ["x:Account/get", {"ids": ["zzzzzz", jmap_id(gina_id)]}, "5"])
    assert [e[1].get("type") for e in errors[:5]] == ["unsupportedFilter", "unsupportedFilter", "unsupportedSort",
                                                      "invalidArguments", "invalidArguments"]
    assert errors[5][1]["notFound"] == ["zzzzzz"] and [a["id"] for a in errors[5][1]["list"]] == [jmap_id(gina_id)]


# -- the queue in both dialects ------------------------------------------------------------------------
def _insert_queue(srv: MailsrvProc) -> dict[str, Any]:
    now = time.time()
    with db(srv) as conn:
        conn.execute("INSERT INTO queue_messages(id, return_path, blob_hash, size, created, env_id, priority, account_id) "
                     "VALUES(701, 'alice@example.org', ?, 2048, ?, 'env-1', 0, 1)", ("ab" * 32, now - 600))
        conn.execute("INSERT INTO queue_messages(id, return_path, blob_hash, size, created, env_id, priority, account_id) "
                     "VALUES(702, 'news@lists.example', ?, 512, ?, NULL, -5, NULL)", ("cd" * 32, now - 60))
        rows = [
            (701, "x@remote.test", "scheduled", 0, now + 300, now + 86400, ""),
            (701, "y@remote.test", "temp_fail", 2, now + 900, now + 86400, "451 4.3.0 Try again later"),
            (702, "z@other.test", "perm_fail", 1, now - 30, now + 86400, "550 5.1.1 No such user"),
            (702, "w@other.test", "temp_fail", 1, now + 60, now + 86400, "Connection refused"),
        ]
        conn.executemany("INSERT INTO queue_recipients(queue_id, address, status, retry_num, next_retry, expires, last_error) "
                         "VALUES(?,?,?,?,?,?,?)", rows)
    return {"now": now}


def test_queue_both_dialects(srv: MailsrvProc) -> None:
    assert api(srv, "GET", "/api/queue/status").json() == {"data": False}
    _insert_queue(srv)

    ids = api(srv, "GET", "/api/queue/messages").json()["data"]
    assert ids == {"items": [701, 702], "total": 2, "status": False}
    full = api(srv, "GET", "/api/queue/messages", params={"values": "", "limit": 1, "page": 1}).json()["data"]
    assert full["total"] == 2 and len(full["items"]) == 1
    m = full["items"][0]
    assert set(m) == {"id", "return_path", "recipients", "created", "size", "env_id", "blob_hash"}  # priority 0 omitted
    assert (m["id"], m["return_path"], m["size"], m["env_id"]) == (701, "alice@example.org", 2048, "env-1")
    assert m["blob_hash"] == "q6urq6urq6urq6urq6urq6urq6urq6urq6urq6urq6s"  # base64url of the digest bytes
    assert m["created"].endswith("Z")
    x, y = m["recipients"]
    assert x["status"] == "scheduled" and y["status"] == {"temp_fail": "451 4.3.0 Try again later"}
    assert (y["address"], y["queue"], y["retry_num"]) == ("y@remote.test", "default", 2)
    assert set(y) == {"address", "queue", "status", "retry_num", "next_retry", "expires"}
    one = api(srv, "GET", "/api/queue/messages/702").json()["data"]
    assert one["priority"] == -5 and "env_id" not in one
    assert [r["status"] for r in one["recipients"]] == [{"perm_fail": "550 5.1.1 No such user"},
                                                        {"temp_fail": "Connection refused"}]
    assert api(srv, "GET", "/api/queue/messages", params={"text": "other.test"}).json()["data"]["items"] == [702]
    assert api(srv, "GET", "/api/queue/messages", params={"to": "remote"}).json()["data"]["items"] == [701]
    assert api(srv, "GET", "/api/queue/messages", params={"from": "news@"}).json()["data"]["items"] == [702]

    # the same queue through x:QueuedMessage (camelCase, ids in JMAP encoding)
    out = x_call(srv, srv.admin,
                 ["x:QueuedMessage/query", {"calculateTotal": True}, "q"],
                 ["x:QueuedMessage/get", {"#ids": {"resultOf": "q", "name": "x:QueuedMessage/query", "path": "/ids"}}, "g"],
                 ["x:QueuedMessage/query", {"filter": {"to": "remote.test"}}, "f"],
                 ["x:QueuedMessage/query", {"filter": {"dueIsGreaterThan": "2000-01-01T00:00:00Z",
                                                       "dueIsLessThan": "2000-01-02T00:00:00Z"}}, "d"])
    query, get, by_to, by_due = (r[1] for r in out)
    # ordered by next due event: 702 (w@ due in 60 s) before 701 (x@ in 300 s)
    assert query["ids"] == [jmap_id(702), jmap_id(701)] and query["total"] == 2
    assert by_to["ids"] == [jmap_id(701)] and by_due["ids"] == []
    q702, q701 = get["list"]
    assert set(q701) == {"id", "createdAt", "nextRetry", "nextNotify", "blobId", "returnPath", "recipients", "flags",
                         "envId", "priority", "size"}
    assert (q701["returnPath"], q701["size"], q701["envId"], q701["blobId"]) == ("alice@example.org", 2048, "env-1", "ab" * 32)
    assert q701["flags"] == {"authenticated": True} and q702["flags"] == {"unauthenticated": True}
    assert q701["nextRetry"] == m["recipients"][0]["next_retry"]  # both dialects agree on the facts
    yr = q701["recipients"]["y@remote.test"]
    assert (yr["retryCount"], yr["queueName"], yr["retryDue"]) == (2, "default", y["next_retry"])
    assert yr["expires"] == {"@type": "Ttl", "expiresAt": y["expires"]}
    assert yr["status"]["@type"] == "TemporaryFailure" and yr["status"]["responseCode"] == 451
    assert yr["status"]["responseEnhanced"] == "4.3.0" and yr["status"]["responseMessage"] == "Try again later"
    assert q701["recipients"]["x@remote.test"]["status"] == {"@type": "Scheduled"}
    assert q702["recipients"]["z@other.test"]["status"]["@type"] == "PermanentFailure"
    assert q702["recipients"]["w@other.test"]["status"]["errorMessage"] == "Connection refused"
    assert q702["returnPath"] == "news@lists.example" and q702["priority"] == -5 and q702["envId"] is None

    # reschedule now: pending recipients become due, the failed one keeps its time
    before = api(srv, "GET", "/api/queue/messages/702").json()["data"]["recipients"]
    assert api(srv, "PATCH", "/api/queue/messages/702").json() == {"data": True}
    after = api(srv, "GET", "/api/queue/messages/702").json()["data"]["recipients"]
    assert after[0]["next_retry"] == before[0]["next_retry"]
    assert after[1]["next_retry"] < before[1]["next_retry"]
    assert api(srv, "PATCH", "/api/queue/messages/702", params={"filter": "nobody"}).json() == {"data": False}

    # cancel one recipient, then the whole message
    assert api(srv, "DELETE", "/api/queue/messages/701", params={"filter": "y@"}).json() == {"data": True}
    rcpts = api(srv, "GET", "/api/queue/messages/701").json()["data"]["recipients"]
    assert rcpts[1]["status"] == {"perm_fail": "Delivery canceled."} and rcpts[0]["status"] == "scheduled"
    assert api(srv, "DELETE", "/api/queue/messages/701").json() == {"data": True}
    assert api(srv, "GET", "/api/queue/messages/701").status_code == 404
    # cancelling the last pending recipient removes the message
    assert api(srv, "DELETE", "/api/queue/messages/702", params={"filter": "w@"}).json() == {"data": True}
    assert api(srv, "GET", "/api/queue/messages").json()["data"] == {"items": [], "total": 0, "status": False}
    assert x_call(srv, srv.admin, ["x:QueuedMessage/get", {"ids": [jmap_id(701)]}, "0"])[0][1]["notFound"] == [jmap_id(701)]


def test_queue_pause_flag(srv: MailsrvProc) -> None:
    assert api(srv, "PATCH", "/api/queue/status/start").json() == {"data": False}
    with db(srv) as conn:
        assert conn.execute("SELECT value FROM meta WHERE key='queue_paused'").fetchone() == ("0",)
    assert api(srv, "GET", "/api/queue/messages").json()["data"]["status"] is True
    assert api(srv, "PATCH", "/api/queue/status/stop").json() == {"data": True}
    with db(srv) as conn:
        assert conn.execute("SELECT value FROM meta WHERE key='queue_paused'").fetchone() == ("1",)
    assert api(srv, "GET", "/api/queue/status").json() == {"data": False}


def test_real_submission_appears_in_both_dialects(srv: MailsrvProc) -> None:
    """A message submitted over SMTP to a foreign address waits in the (paused) queue, visible in both APIs."""
    try:
        smtp = smtplib.SMTP("127.0.0.1", srv.submission_port, timeout=10)
    except OSError:
        pytest.skip("the SMTP submission listener is not available in this build")
    with smtp:
        smtp.ehlo("client.example")
        if smtp.has_extn("starttls"):
            ctx = ssl.create_default_context(cafile=str(srv.cert))
            ctx.check_hostname = False
            smtp.starttls(context=ctx)
            smtp.ehlo("client.example")
        smtp.login("alice", USER_PASSWORD)
        smtp.sendmail("alice@example.org", ["friend@far-away.test"],
                      b"From: alice@example.org\r\nTo: friend@far-away.test\r\nSubject: hi\r\n\r\nhello\r\n")
    listed = api(srv, "GET", "/api/queue/messages", params={"values": "", "text": "far-away.test"}).json()["data"]
    assert listed["total"] == 1 and listed["status"] is False
    (msg,) = listed["items"]
    assert msg["return_path"] == "alice@example.org"
    assert [r["address"] for r in msg["recipients"]] == ["friend@far-away.test"]
    assert msg["recipients"][0]["status"] == "scheduled"
    q = x_call(srv, srv.admin, ["x:QueuedMessage/get", {"ids": [jmap_id(msg["id"])]}, "0"])[0][1]["list"][0]
    assert q["returnPath"] == "alice@example.org" and list(q["recipients"]) == ["friend@far-away.test"]
    assert q["size"] == msg["size"] and q["flags"] == {"authenticated": True}
    assert api(srv, "DELETE", f"/api/queue/messages/{msg['id']}").json() == {"data": True}


def test_large_bodies(srv: MailsrvProc) -> None:
    """A description-sized body split over many TCP chunks parses whole; more than 1 MiB is refused."""
    padding = " " * 300_000  # JSON whitespace: makes the body arrive in many chunks
    body = ('{"name": "hank",' + padding + '"description": "end of a long body", "emails": ["hank@example.org"]}').encode()
    assert isinstance(api(srv, "POST", "/api/principal", data=body).json()["data"], int)
    assert api(srv, "GET", "/api/principal/hank").json()["data"]["description"] == "end of a long body"
    huge = api(srv, "POST", "/api/principal", data=b'{"name": "ivan",' + b" " * (1 << 20) + b"}")
    assert huge.status_code in (400, 413) and huge.headers["Content-Type"].startswith("application/problem+json")
    assert api(srv, "GET", "/api/principal/ivan").json()["error"] == "notFound"
