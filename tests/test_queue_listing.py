"""Queue listing that scales: mailsrv pages ``/api/queue/messages`` (0.15) and ``x:QueuedMessage`` (0.16) in SQL,
and the management clients walk a queue that moves while it is listed (``iter_queue``), each message once.

The queues are written straight into a running (paused) mailsrv's store: thousands of messages in a second,
with recipients in every status, shared retry times (ties) and messages with nothing left to deliver.
"""

from __future__ import annotations

import os
import random
import sqlite3
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from mailsrv.client import open_profile
from mailsrv.client.management import ManagementClient, Stalwart015Management, Stalwart016Management
from mailsrv.config import parse_config
from mailsrv.server.store.ids import jmap_id
from tests.conftest import MailsrvProc, start_mailsrv
from tests.test_exporter_support import start_exporter, val, wait_for

STALWART = ["urn:ietf:params:jmap:core", "urn:stalwart:jmap"]
BASE = 2_000_000_000.0  # retry times in 2033: nothing is due while the tests run
PENDING = ("scheduled", "temp_fail")


@dataclass
class Queued:
    id: int
    return_path: str
    recipients: list[tuple[str, str, float]]  # address, status, next_retry

    @property
    def due(self) -> float | None:
        pending = [t for _, s, t in self.recipients if s in PENDING]
        return min(pending) if pending else None


def store(srv: MailsrvProc) -> sqlite3.Connection:
    conn = sqlite3.connect(srv.data_dir / "mailsrv.sqlite3", timeout=30)
    conn.execute("PRAGMA busy_timeout=30000")
    return conn


def fill(srv: MailsrvProc, n: int, seed: int = 7, ties: int = 40) -> dict[int, Queued]:
    """Queue ``n`` messages (1-3 recipients, every status; retry times from ``ties`` values, so many are equal)."""
    assert requests.patch(f"{srv.url}/api/queue/status/stop", auth=srv.admin, timeout=10).ok
    rng = random.Random(seed)
    out: dict[int, Queued] = {}
    with store(srv) as conn:
        for i in range(n):
            sender = rng.choice(["alice@example.org", "news@lists.example", "bob@example.org"])
            qid = conn.execute("INSERT INTO queue_messages(return_path, blob_hash, size, created, account_id) VALUES(?,?,?,?,NULL)",
                               (sender, "ab" * 32, 1000 + i, BASE - 86400 + i)).lastrowid
            assert qid is not None
            rcpts = []
            for r in range(rng.choice((1, 1, 2, 3))):
                status = rng.choice(("scheduled", "temp_fail", "temp_fail", "perm_fail", "completed"))
                rcpts.append((f"user{i}.{r}@dest{rng.randrange(5)}.example", status, BASE + 60 * rng.randrange(ties)))
            conn.executemany("INSERT INTO queue_recipients(queue_id, address, status, retry_num, next_retry, expires, last_error) "
                             "VALUES(?,?,?,0,?,?,'')", [(qid, a, s, t, BASE + 86400) for a, s, t in rcpts])
            out[qid] = Queued(qid, sender, rcpts)
    return out


def by_due(queue: dict[int, Queued]) -> list[int]:
    """The 0.16 order: next retry, ties by queue id, messages with nothing pending last."""
    return sorted(queue, key=lambda i: (queue[i].due is None, queue[i].due or 0.0, i))


def api(srv: MailsrvProc, **params: Any) -> dict[str, Any]:
    r = requests.get(f"{srv.url}/api/queue/messages", params=params, auth=srv.admin, timeout=30)
    assert r.status_code == 200, r.text
    return dict(r.json()["data"])


def x_call(srv: MailsrvProc, *calls: list[Any]) -> list[dict[str, Any]]:
    out = srv.jmap(srv.admin, list(calls), using=STALWART)
    assert all(name != "error" for name, _, _ in out), out
    return [args for _, args, _ in out]


def query(srv: MailsrvProc, **args: Any) -> dict[str, Any]:
    return x_call(srv, ["x:QueuedMessage/query", args, "q"])[0]


def cpu_seconds(srv: MailsrvProc) -> float:
    """CPU time the server process has used (user + system): what requests cost it, whatever the machine's load."""
    fields = Path(f"/proc/{srv.proc.pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def stamp(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MailsrvProc]:
    server = start_mailsrv(tmp_path_factory.mktemp("queue-listing"), jmap={"max_objects_in_get": 100})
    yield server
    server.stop()


@pytest.fixture(scope="module")
def queue(srv: MailsrvProc) -> dict[int, Queued]:
    queued = fill(srv, QUEUED, ties=500)
    api(srv, limit=1)  # the admin login is verified once, outside the measured requests
    return queued


# Loading the whole queue per request, as a listing that does not page in SQL does, costs the server about a
# second of CPU per request at this size; a page read in SQL costs a few milliseconds.
QUEUED = 20_000
CPU_BUDGET = 6.0  # seconds of server CPU for all requests of one test (dozens of them)


# -- the server: 0.15 REST ---------------------------------------------------------------------------
def test_rest_pages_and_filters_cost_the_page_not_the_queue(srv: MailsrvProc, queue: dict[int, Queued]) -> None:
    cpu = cpu_seconds(srv)
    ids = sorted(queue)
    listed: list[int] = []
    for page in range(1, 21):  # in queue-id order
        data = api(srv, limit=1000, page=page)
        assert data["total"] == QUEUED and data["status"] is False
        listed += data["items"]
    assert listed == ids and api(srv, limit=1000, page=21)["items"] == []

    for page in (3, 90, 199):
        shown = api(srv, values="", limit=100, page=page)["items"]
        assert [m["id"] for m in shown] == ids[(page - 1) * 100 : page * 100]
        for m in shown:
            assert m["return_path"] == queue[m["id"]].return_path
            assert [r["address"] for r in m["recipients"]] == [a for a, _, _ in queue[m["id"]].recipients]
    capped = api(srv, limit=100, page=3, **{"max-total": 250})
    assert capped["total"] == 250 and capped["items"] == ids[200:250]

    def expect(pred: Callable[[Queued], bool]) -> list[int]:
        return [i for i in ids if pred(queue[i])]

    assert api(srv, text="dest3.example")["items"] == expect(lambda q: any("dest3.example" in a for a, _, _ in q.recipients))
    assert api(srv, text="news@")["items"] == expect(lambda q: "news@" in q.return_path)
    both = expect(lambda q: "bob@" in q.return_path and any("dest1." in a for a, _, _ in q.recipients))
    assert api(srv, **{"from": "bob@", "to": "dest1."})["items"] == both
    assert api(srv, text="news@", **{"from": "bob@"})["items"] == expect(lambda q: "news@" in q.return_path)  # text wins
    cut = BASE + 60 * 200
    before = api(srv, before=stamp(cut), limit=50, page=2)
    due_before = expect(lambda q: q.due is not None and q.due < cut)
    assert before["total"] == len(due_before) and before["items"] == due_before[50:100]
    assert api(srv, after=stamp(cut))["items"] == expect(lambda q: q.due is not None and q.due > cut)
    assert api(srv, queue="other") == {"items": [], "total": 0, "status": False}
    used = cpu_seconds(srv) - cpu
    assert used < CPU_BUDGET, f"{used:.2f} s of server CPU"


# -- the server: 0.16 x:QueuedMessage ----------------------------------------------------------------
def test_query_and_get_cost_the_page_not_the_queue(srv: MailsrvProc, queue: dict[int, Queued]) -> None:
    cpu = cpu_seconds(srv)
    order = [jmap_id(i) for i in by_due(queue)]
    assert sum(1 for q in queue.values() if q.due is None) > 1000  # nothing pending: listed last
    by_position: list[str] = []
    for position in range(0, QUEUED, 5000):  # by next retry, ties by queue id
        page = query(srv, position=position, calculateTotal=True)
        assert page["total"] == QUEUED and page["position"] == position
        by_position += page["ids"]
    by_anchor: list[str] = []
    anchor = None
    while True:
        page = query(srv, limit=1000, **({"anchor": anchor, "anchorOffset": 1} if anchor else {}))
        if not page["ids"]:
            break
        assert page["position"] == len(by_anchor)
        by_anchor += page["ids"]
        anchor = page["ids"][-1]
    assert by_position == order and by_anchor == order
    assert query(srv, sort=[{"property": "due", "isAscending": False}], limit=300)["ids"] == order[::-1][:300]
    assert query(srv, position=-5, limit=3, calculateTotal=True) | {"queryState": None} == {
        "accountId": None, "queryState": None, "canCalculateChanges": False, "position": QUEUED - 5,
        "ids": order[-5:-2], "total": QUEUED}
    assert query(srv, anchor=order[8000], anchorOffset=-3, limit=4)["ids"] == order[7997:8001]
    errors = srv.jmap(srv.admin, [["x:QueuedMessage/query", {"anchor": jmap_id(999_999)}, "0"],
                                  ["x:QueuedMessage/query", {"anchor": "not-an-id"}, "1"]], using=STALWART)
    assert [e[1]["type"] for e in errors] == ["anchorNotFound", "anchorNotFound"]

    due = by_due(queue)
    cut = BASE + 60 * 100
    flt = {"to": "dest2.example", "dueIsLessThan": stamp(cut)}
    found = query(srv, filter=flt, calculateTotal=True, position=3, limit=20)
    expect = [jmap_id(i) for i in due
              if any("dest2.example" in a for a, _, _ in queue[i].recipients) and (d := queue[i].due) is not None and d < cut]
    assert found["total"] == len(expect) and found["ids"] == expect[3:23]

    for start in (0, 9_000, 19_900):
        wanted = [*order[start : start + 99], "zzzzzz"]
        got = x_call(srv, ["x:QueuedMessage/get", {"ids": wanted, "properties": ["returnPath", "nextRetry"]}, "g"])[0]
        assert [o["id"] for o in got["list"]] == wanted[:99] and got["notFound"] == ["zzzzzz"]  # the order asked for
        assert set(got["list"][0]) == {"id", "returnPath", "nextRetry"}
        assert got["list"][0]["returnPath"] == queue[due[start]].return_path
    first = x_call(srv, ["x:QueuedMessage/get", {"properties": ["id"]}, "g"])[0]["list"]
    assert [o["id"] for o in first] == [jmap_id(i) for i in sorted(queue)[:100]]  # no ids: maxObjectsInGet by id
    used = cpu_seconds(srv) - cpu
    assert used < CPU_BUDGET, f"{used:.2f} s of server CPU"


# -- the clients: iter_queue ----------------------------------------------------------------------------
def management(srv: MailsrvProc, profile: str, tmp_path: Path) -> ManagementClient:
    cfg = parse_config({"server": {"profile": profile, "url": srv.url, "admin_user": "admin",
                                   "admin_password_file": str(srv.dir / "admin.pw")}}, str(tmp_path / "config.toml"))
    return open_profile(cfg).management


@pytest.fixture
def small(mailsrv_factory: Callable[..., MailsrvProc]) -> MailsrvProc:
    return mailsrv_factory("small", jmap={"max_objects_in_get": 40})


def test_iter_queue_lists_each_message_once_in_both_dialects(small: MailsrvProc, tmp_path: Path) -> None:
    queue = fill(small, 500)
    rest = management(small, "embedded", tmp_path)
    assert isinstance(rest, Stalwart015Management) and rest.queue_running is None
    listed = list(rest.iter_queue(64))
    assert [int(m.id) for m in listed] == sorted(queue) and rest.queue_running is False  # paused
    assert [r.address for r in listed[9].recipients] == [a for a, _, _ in queue[int(listed[9].id)].recipients]
    assert [m.id for m in rest.list_queue()] == [m.id for m in listed]

    jmap = management(small, "stalwart-0.16", tmp_path)
    assert isinstance(jmap, Stalwart016Management)
    assert not jmap.client.session.accounts  # the configured admin has no account: management is server-wide
    listed16 = list(jmap.iter_queue(64))  # pages of 64 ids, /get in batches of 40
    assert [m.id for m in listed16] == [jmap_id(i) for i in by_due(queue)] and jmap.queue_running is None
    one = next(m for m in listed16 if m.id == jmap_id(sorted(queue)[9]))
    assert sorted(r.address for r in one.recipients) == sorted(a for a, _, _ in queue[sorted(queue)[9]].recipients)
    assert [m.id for m in jmap.list_queue()] == [m.id for m in listed16]


def test_v016_listing_of_a_queue_that_moves_between_pages(small: MailsrvProc, tmp_path: Path) -> None:
    """After the first page: ten of its messages are retried (to the end of the order) and its last message,
    the anchor of the next page, and the one before are delivered. Paging by position would now skip twelve
    messages and list the ten again; the client lists every message exactly once."""
    queue = fill(small, 300, ties=10_000)
    order = by_due(queue)
    jmap = management(small, "stalwart-0.16", tmp_path)
    it = jmap.iter_queue(50)
    first = [next(it).id for _ in range(50)]
    assert first == [jmap_id(i) for i in order[:50]]
    with store(small) as conn:
        conn.executemany("UPDATE queue_recipients SET next_retry = next_retry + 10 * 86400 WHERE queue_id = ?",
                         [(i,) for i in order[5:15]])
        conn.executemany("DELETE FROM queue_recipients WHERE queue_id = ?", [(order[48],), (order[49],)])
        conn.executemany("DELETE FROM queue_messages WHERE id = ?", [(order[48],), (order[49],)])
    rest = [m.id for m in it]
    assert len(first) + len(rest) == len(set(first + rest)) == 300
    assert set(first + rest) == {jmap_id(i) for i in queue}


def test_exporter_counts_exactly_queue_max_messages(small: MailsrvProc, tmp_path: Path) -> None:
    fill(small, 250)
    exp = start_exporter(tmp_path / "exp", {
        "server": {"profile": "embedded", "url": small.url, "admin_password_file": str(small.dir / "admin.pw")},
        "exporter": {"sources": ["queue"], "queue_interval": 0.3, "queue_page_size": 64, "queue_max_messages": 100},
    })
    try:
        statuses = ("scheduled", "temp_fail", "perm_fail", "completed")
        s = wait_for(lambda: (lambda s: s if val(s, "mail_exporter_source_up", source="queue") == 1 else None)(exp.scrape()))
        assert sum(val(s, "mail_queue_messages", status=st) or 0 for st in statuses) == 100  # not a whole page more
        assert val(s, "mail_queue_listing_truncated") == 1 and val(s, "mail_queue_running") == 0
    finally:
        exp.stop()
