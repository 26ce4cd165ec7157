"""``mailsrv seed``: realistic, reproducible mail written through the store, with or without a running server."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from datetime import UTC, datetime
from email import policy
from email.parser import BytesParser
from pathlib import Path
from typing import Any

import pytest
import requests

from mailsrv.server.store import Store
from tests.conftest import USER_PASSWORD, MailsrvProc, write_toml

COUNT = 40


def _offline(tmp_path: Path, name: str, *accounts: str) -> Path:
    """A config whose data dir has ``accounts`` but no server running on it."""
    base = tmp_path / name
    base.mkdir()
    config = base / "config.toml"
    write_toml(config, {"mailsrv": {"data_dir": str(base / "data"), "domains": ["example.org"]}})
    for a in accounts:
        _cli(config, "account", "add", a, env={"MAILSRV_ACCOUNT_PASSWORD": USER_PASSWORD})
    return config


def _cli(config: Path, *args: str, env: dict[str, str] | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("MAILSRV_")} | (env or {})
    return subprocess.run([sys.executable, "-m", "mailsrv", "--config", str(config), *args],
                          capture_output=True, text=True, env=full_env, check=check, timeout=120)


def _emails(data_dir: Path, account: str) -> tuple[list[dict[str, Any]], Store]:
    store = Store(data_dir)
    p = store.principals.by_name(account)
    assert p is not None
    paths = _mailbox_paths(store, p.id)
    rows = store.db.q("SELECT id, blob_hash, thread_id, size, received_at, keywords, message_id, summary FROM emails "
                      "WHERE account_id=? ORDER BY id", (p.id,))
    out = []
    for r in rows:
        boxes = [paths[b[0]] for b in store.db.q("SELECT mailbox_id FROM email_mailboxes WHERE email_id=?", (r["id"],))]
        out.append({**dict(r), "keywords": json.loads(r["keywords"]), "summary": json.loads(r["summary"]), "mailboxes": boxes})
    return out, store


def _mailbox_paths(store: Store, account_id: int) -> dict[int, str]:
    boxes = {b.id: b for b in store.mail.mailboxes(account_id)}

    def path(i: int) -> str:
        b = boxes[i]
        return b.name if b.parent_id is None else f"{path(b.parent_id)}/{b.name}"

    return {i: path(i) for i in boxes}


def test_seed_is_deterministic_and_needs_no_server(tmp_path: Path) -> None:
    runs = []
    for name, seed in (("a", "7"), ("b", "7"), ("c", "8")):
        config = _offline(tmp_path, name, "alice")
        out = json.loads(_cli(config, "seed", "--account", "alice", "--count", "25", "--random-seed", seed, "--json").stdout)
        assert out["accounts"][0]["messages"] == 25
        emails, _ = _emails(tmp_path / name / "data", "alice")
        runs.append([(e["blob_hash"], e["received_at"], e["keywords"], e["mailboxes"]) for e in emails])
    assert len(runs[0]) == 25
    assert runs[0] == runs[1], "the same seed must give the same messages"
    assert {r[0] for r in runs[0]}.isdisjoint({r[0] for r in runs[2]}), "another seed must give other messages"


def test_seeded_mail_is_realistic(tmp_path: Path) -> None:
    config = _offline(tmp_path, "srv", "alice")
    summary = json.loads(_cli(config, "seed", "--account", "alice", "--count", str(COUNT), "--json").stdout)
    emails, store = _emails(tmp_path / "srv" / "data", "alice")
    raws = {e["id"]: store.blobs.read(e["blob_hash"]) for e in emails}
    assert len(emails) == COUNT
    (acct,) = summary["accounts"]
    assert acct["bytes"] == sum(e["size"] for e in emails) == sum(len(r) for r in raws.values())
    assert sum(acct["mailboxes"].values()) == COUNT

    # threads: replies carry In-Reply-To/References and share the thread of the message they answer
    by_msgid = {e["summary"]["messageId"][0]: e for e in emails if e["summary"]["messageId"]}
    replies = [e for e in emails if e["summary"]["inReplyTo"]]
    assert replies
    for r in replies:
        parent = by_msgid[r["summary"]["inReplyTo"][0]]
        assert r["thread_id"] == parent["thread_id"]
        assert r["summary"]["references"][-1] == r["summary"]["inReplyTo"][0]
        assert "Re: " in r["summary"]["subject"]
    thread_sizes: dict[int, int] = {}
    for e in emails:
        thread_sizes[e["thread_id"]] = thread_sizes.get(e["thread_id"], 0) + 1
    assert max(thread_sizes.values()) >= 3

    # Message-ID oddities: some missing, some duplicated
    ids = [e["message_id"] for e in emails]
    assert None in ids
    assert len([i for i in ids if i]) > len({i for i in ids if i}), "expected a duplicate Message-ID"

    # MIME variety, checked on the stored bytes with the standard library's parser
    parsed = {i: BytesParser(policy=policy.default).parsebytes(r) for i, r in raws.items()}
    ctes = {(p.get_content_type(), str(p.get("Content-Transfer-Encoding", "7bit")).lower())
            for m in parsed.values() for p in m.walk() if not p.is_multipart()}
    assert {("text/plain", "quoted-printable"), ("text/plain", "base64"), ("text/plain", "8bit")} <= ctes
    assert any(m.get_content_type() == "multipart/alternative" and
               {p.get_content_type() for p in m.walk()} >= {"text/plain", "text/html"} for m in parsed.values())
    assert any(p.get_content_type() == "message/rfc822" for m in parsed.values() for p in m.walk())
    attachments = [p for m in parsed.values() for p in m.iter_attachments()] + \
        [a for m in parsed.values() for p in m.walk() if p.is_multipart() for a in p.iter_attachments()]
    binary = [a for a in attachments if a.get_content_maintype() in ("application", "image", "video")]
    assert binary and all(str(a["Content-Transfer-Encoding"]).lower() == "base64" for a in binary)
    assert any(len(a.get_payload(decode=True)) > 700_000 for a in binary)
    assert any(not (a.get_filename() or "x").isascii() for a in binary), "expected a non-ASCII file name"
    assert any(e["summary"]["hasAttachment"] for e in emails)

    # sizes from ~1 KB, one message of 1-2 MB
    sizes = sorted(e["size"] for e in emails)
    assert sizes[0] >= 1000 and 1_000_000 <= sizes[-1] <= 2_100_000

    # RFC 2047 headers (B and Q) that decode to several scripts
    heads = b"".join(r.split(b"\r\n\r\n", 1)[0] for r in raws.values())
    assert b"=?UTF-8?B?" in heads and b"=?UTF-8?Q?" in heads
    subjects = " ".join(e["summary"]["subject"] or "" for e in emails)
    names = " ".join(a["name"] or "" for e in emails for a in e["summary"]["from"] or [])
    for script in (r"[\u3040-\u30ff]", r"[\u4e00-\u9fff]", r"[\u0400-\u04ff]", r"[\U0001F300-\U0001FAFF]", r"[äöüßéè]"):
        assert re.search(script, subjects + names), script

    # folders, nested and non-ASCII, and keywords incl. a custom one
    paths = set(_mailbox_paths(store, store.principals.by_name("alice").id).values())  # type: ignore[union-attr]
    assert {"Inbox", "Projects/2026/Q1", "Projects/2026/Q2", "Lists/mailsidecar-dev", "家族"} <= paths
    used = {b for e in emails for b in e["mailboxes"]}
    assert {"Inbox", "Projects/2026/Q1", "Sent Items", "Drafts"} <= used
    keywords = {k for e in emails for k in e["keywords"]}
    assert {"$seen", "$flagged", "$answered", "$draft", "project-x"} <= keywords
    assert any("$seen" not in e["keywords"] for e in emails)

    # received over several years
    years = {datetime.fromtimestamp(e["received_at"], UTC).year for e in emails}
    assert max(years) - min(years) >= 3
    store.close()


def test_seed_into_running_server_is_visible_over_jmap(mailsrv: MailsrvProc) -> None:
    out = json.loads(mailsrv.cli("seed", "--account", "alice", "--account", "bob", "--count", "20", "--json").stdout)
    assert [a["account"] for a in out["accounts"]] == ["alice", "bob"]
    session = mailsrv.session("alice")
    aid = session["primaryAccounts"]["urn:ietf:params:jmap:mail"]
    (res,) = mailsrv.jmap("alice", [["Mailbox/get", {"accountId": aid}, "0"]])
    boxes = {b["id"]: b for b in res[1]["list"]}
    assert sum(b["totalEmails"] for b in boxes.values()) == 20
    q1 = next(b for b in boxes.values() if b["name"] == "Q1")
    year = boxes[q1["parentId"]]
    assert year["name"] == "2026" and boxes[year["parentId"]]["name"] == "Projects"
    assert q1["totalEmails"] >= 1

    # the biggest message downloads byte for byte through the session's download URL
    store = Store(mailsrv.data_dir)
    pid = store.principals.by_name("alice").id  # type: ignore[union-attr]
    digest, size = store.db.one("SELECT blob_hash, size FROM emails WHERE account_id=? ORDER BY size DESC LIMIT 1", (pid,))  # type: ignore[misc]
    url = session["downloadUrl"].format(accountId=aid, blobId=digest, name="big.eml", type="message/rfc822")
    r = requests.get(url, auth=("alice", USER_PASSWORD), timeout=30)
    assert r.status_code == 200 and len(r.content) == size >= 1_000_000
    assert r.content == store.blobs.read(digest)
    store.close()


def test_unknown_account_is_exit_3_and_writes_nothing(tmp_path: Path) -> None:
    config = _offline(tmp_path, "srv", "alice")
    r = _cli(config, "seed", "--account", "alice", "--account", "nosuchuser", "--count", "5", check=False)
    assert r.returncode == 3
    assert "nosuchuser" in r.stderr and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    emails, store = _emails(tmp_path / "srv" / "data", "alice")
    assert emails == []
    store.close()


@pytest.mark.parametrize("args", [["--count", "0", "--account", "alice"], ["--count", "5"], ["--account", "alice", "--count", "x"]])
def test_bad_arguments_are_usage_errors(tmp_path: Path, args: list[str]) -> None:
    config = _offline(tmp_path, "srv")
    r = _cli(config, "seed", *args, check=False)
    assert r.returncode == 1, r.stderr
    assert "Traceback" not in r.stderr and "Error" in r.stderr
