"""Benchmark mailsrv's ingest and JMAP read paths, side by side with Cyrus IMAP 3.6 as the reference.

For each server, in the same run:

* ingest: N messages over SMTP (mailsrv ``smtp_listen``) or LMTP (Cyrus), one connection and 4 in parallel;
* Email/query for every id of a 10k-message account, then Email/get in batches of the server's
  ``maxObjectsInGet`` (properties incl. blobId, receivedAt, keywords, mailboxIds, subject, from);
* downloads of the messages' blobs through the session's ``downloadUrl``, one connection and 4 in parallel.

mailsrv's account is filled with ``mailsrv seed`` (timed as well); Cyrus's with ``cyrus-testbed bulk``.
Every number is the median of ``--runs`` runs. Run as root on a Debian 12 machine for the Cyrus column;
without it the column is skipped with the reason. Usage: ``python bench/bench_mailsrv.py --help``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import smtplib
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.conftest import start_mailsrv as launch_mailsrv  # noqa: E402
from tests.cyrus import start_cyrus as launch_cyrus  # noqa: E402

USING = ["urn:ietf:params:jmap:core", "urn:ietf:params:jmap:mail"]
PROPERTIES = ["id", "blobId", "threadId", "mailboxIds", "keywords", "size", "receivedAt", "messageId", "subject", "from", "to",
              "sentAt", "hasAttachment", "preview"]
PASSWORD = "bench-Password-1"


# -- servers ---------------------------------------------------------------------------------------
@dataclass
class Server:
    """One server under test: how to ingest into it and how to read an account over JMAP."""

    name: str
    ingest_proto: str  # "SMTP" or "LMTP"
    ingest_port: int
    ingest_rcpt: str
    session_url: str
    reader: tuple[str, str]  # user, password of the account holding the big mailbox
    notes: list[str] = field(default_factory=list)
    stop: Callable[[], None] = lambda: None
    load_seconds: float | None = None
    load_count: int = 0
    load_bytes: int = 0


def start_mailsrv(base: Path, count: int) -> Server:
    """Start ``mailsrv serve`` on run-time ports, create accounts, seed ``count`` messages into ``reader``."""
    proc = launch_mailsrv(base, smtp_rate_limit=0)  # the launcher the tests use; one client may send thousands
    for name in ("reader", "ingest"):
        proc.add_account(name, PASSWORD)
    t0 = time.monotonic()
    seeded = json.loads(proc.cli("seed", "--account", "reader", "--count", str(count), "--json").stdout)["accounts"][0]
    srv = Server("mailsrv", "SMTP", proc.smtp_port, "ingest@example.org", f"{proc.url}/.well-known/jmap", ("reader", PASSWORD),
                 stop=proc.stop)
    srv.load_seconds, srv.load_count, srv.load_bytes = time.monotonic() - t0, seeded["messages"], seeded["bytes"]
    srv.notes.append(f"mailsrv: {count} messages from `mailsrv seed` (mixed MIME, {seeded['bytes'] / count / 1024:.0f} KiB mean) "
                     f"written into the running server")
    return srv


def start_cyrus(base: Path, count: int) -> Server:
    """Start the Cyrus testbed on run-time ports and bulk-load ``count`` messages (raises with the reason)."""
    bed = launch_cyrus(base, users=("reader", "ingest"), attempts=2)  # the tests' launcher
    t0 = time.monotonic()
    try:
        bed.bulk("reader", count, timeout=1800)
    except BaseException:
        bed.stop()
        raise
    srv = Server("cyrus", "LMTP", bed.lmtp_port, f"ingest@{bed.domain}", bed.env["JMAP_SESSION_URL"], ("reader", bed.password),
                 stop=bed.stop)
    srv.load_seconds, srv.load_count = time.monotonic() - t0, count
    srv.notes.append(f"cyrus: {count} messages from `cyrus-testbed bulk` (plain text, 0.6-150 KB) "
                     "written as spool files + reconstruct, so its load time is not comparable")
    return srv


# -- measurements ----------------------------------------------------------------------------------
def run_threads(fn: Callable[[Any], None], args: list[Any]) -> None:
    """Run ``fn(arg)`` for each arg in parallel threads; Ctrl-C still interrupts the waiting."""
    threads = [threading.Thread(target=fn, args=(a,), daemon=True) for a in args]
    for t in threads:
        t.start()
    for t in threads:
        while t.is_alive():
            t.join(0.2)


def ingest(srv: Server, messages: list[bytes], connections: int) -> float:
    """Messages per second delivered over SMTP/LMTP with ``connections`` parallel sessions."""
    chunks = [messages[i::connections] for i in range(connections)]
    errors: list[BaseException] = []

    def worker(chunk: list[bytes]) -> None:
        try:
            cls = smtplib.LMTP if srv.ingest_proto == "LMTP" else smtplib.SMTP
            with cls("127.0.0.1", srv.ingest_port, timeout=60) as s:
                for raw in chunk:
                    refused = s.sendmail("bench@example.com", [srv.ingest_rcpt], raw)
                    if refused:
                        raise RuntimeError(f"refused: {refused}")
        except BaseException as exc:
            errors.append(exc)

    t0 = time.perf_counter()
    run_threads(worker, chunks)
    elapsed = time.perf_counter() - t0
    if errors:
        raise RuntimeError(f"{srv.name} ingest failed: {errors[0]!r}")
    return len(messages) / elapsed


class Jmap:
    """A minimal JMAP client over requests (Basic auth, relative session URLs resolved)."""

    def __init__(self, session_url: str, auth: tuple[str, str]) -> None:
        self.http = requests.Session()
        self.http.auth = auth
        r = self.http.get(session_url, timeout=30)
        r.raise_for_status()
        self.session = r.json()
        base = r.url
        self.api = urljoin(base, self.session["apiUrl"])
        self.download = urljoin(base, self.session["downloadUrl"])
        self.account = self.session["primaryAccounts"]["urn:ietf:params:jmap:mail"]
        core = self.session["capabilities"]["urn:ietf:params:jmap:core"]
        self.max_get = int(core["maxObjectsInGet"])

    def call(self, method: str, args: dict[str, Any]) -> dict[str, Any]:
        body = {"using": USING, "methodCalls": [[method, {"accountId": self.account, **args}, "0"]]}
        r = self.http.post(self.api, json=body, timeout=120)
        r.raise_for_status()
        name, result, _ = r.json()["methodResponses"][0]
        if name == "error":
            raise RuntimeError(f"{method}: {result}")
        return dict(result)

    def all_ids(self) -> list[str]:
        ids: list[str] = []
        while True:
            res = self.call("Email/query", {"sort": [{"property": "receivedAt", "isAscending": False}],
                                            "position": len(ids), "calculateTotal": True})
            ids += res["ids"]
            if not res["ids"] or len(ids) >= res["total"]:
                return ids

    def get(self, ids: list[str]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for i in range(0, len(ids), self.max_get):
            res = self.call("Email/get", {"ids": ids[i : i + self.max_get], "properties": PROPERTIES})
            out += res["list"]
        return out

    def url(self, blob_id: str) -> str:
        return (self.download.replace("{accountId}", self.account).replace("{blobId}", blob_id)
                .replace("{name}", "message.eml").replace("{type}", "message/rfc822"))


def download(jmap: Jmap, blob_ids: list[str], connections: int) -> tuple[float, float]:
    """(messages/s, MB/s) downloading ``blob_ids`` with ``connections`` parallel keep-alive sessions."""
    total = [0] * connections
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        http = requests.Session()
        http.auth = jmap.http.auth
        try:
            for b in blob_ids[n::connections]:
                r = http.get(jmap.url(b), timeout=60)
                r.raise_for_status()
                total[n] += len(r.content)
        except BaseException as exc:
            errors.append(exc)

    t0 = time.perf_counter()
    run_threads(worker, list(range(connections)))
    elapsed = time.perf_counter() - t0
    if errors:
        raise RuntimeError(f"download failed: {errors[0]!r}")
    return len(blob_ids) / elapsed, sum(total) / elapsed / 1e6


def measure(srv: Server, messages: list[bytes], runs: int, sample: int) -> dict[str, Any]:
    """All measurements of one server: medians over ``runs``."""
    out: dict[str, list[float]] = {}

    def add(key: str, value: float) -> None:
        out.setdefault(key, []).append(value)

    jmap = Jmap(srv.session_url, srv.reader)
    for _ in range(runs):
        add("ingest1", ingest(srv, messages, 1))
        add("ingest4", ingest(srv, messages, 4))
        t0 = time.perf_counter()
        ids = jmap.all_ids()
        add("query", len(ids) / (time.perf_counter() - t0))
        t0 = time.perf_counter()
        emails = jmap.get(ids)
        add("get", len(emails) / (time.perf_counter() - t0))
        missing = [e for e in emails if not (e.get("blobId") and e.get("receivedAt") and "keywords" in e and e.get("mailboxIds"))]
        if len(emails) != len(ids) or missing:
            raise RuntimeError(f"{srv.name}: Email/get returned {len(emails)} of {len(ids)} emails, {len(missing)} incomplete")
        step = max(1, len(emails) // sample)
        blobs = [e["blobId"] for e in emails[::step]][:sample]
        for conns in (1, 4):
            msgs, mbs = download(jmap, blobs, conns)
            add(f"dl{conns}", msgs)
            add(f"dl{conns}mb", mbs)
    result: dict[str, Any] = {k: statistics.median(v) for k, v in out.items()}
    result.update(emails=len(ids), max_get=jmap.max_get, runs=runs, sample=len(blobs), all=out)
    return result


# -- the table -------------------------------------------------------------------------------------
ROWS = [
    ("ingest, 1 connection", "ingest1", "msgs/s"),
    ("ingest, 4 connections", "ingest4", "msgs/s"),
    ("Email/query, all ids", "query", "ids/s"),
    ("Email/get, batches of maxObjectsInGet", "get", "msgs/s"),
    ("blob download, 1 connection", "dl1", "msgs/s"),
    ("blob download, 4 connections", "dl4", "msgs/s"),
]


def table(servers: list[Server], results: dict[str, dict[str, Any] | str]) -> str:
    cols = []
    for s in servers:
        r = results[s.name]
        cols.append(f"{s.name} ({s.ingest_proto}" + (f", get {r['max_get']})" if isinstance(r, dict) else ")"))
    skipped = {k: v for k, v in results.items() if isinstance(v, str)}
    head = ["measurement", *cols, *(f"{k}" for k in skipped)]
    lines = []
    for label, key, unit in ROWS:
        row = [label]
        for s in servers:
            r = results[s.name]
            assert isinstance(r, dict)
            v = f"{r[key]:,.0f} {unit}"
            if f"{key}mb" in r:
                v += f" ({r[f'{key}mb']:,.1f} MB/s)"
            row.append(v)
        row += ["skipped" for _ in skipped]
        lines.append(row)
    load = ["initial load of the read account"]
    for s in servers:
        load.append(f"{s.load_count:,} in {s.load_seconds:.1f} s ({s.load_count / (s.load_seconds or 1):,.0f} msgs/s)")
    load += ["skipped" for _ in skipped]
    lines.append(load)
    widths = [max(len(r[i]) for r in [head, *lines]) for i in range(len(head))]
    fmt = "  ".join(f"{{:{'<' if i == 0 else '>'}{w}}}" for i, w in enumerate(widths))
    out = [fmt.format(*head), "  ".join("-" * w for w in widths), *(fmt.format(*r) for r in lines)]
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--count", type=int, default=10_000, help="messages in the account read over JMAP [10000]")
    ap.add_argument("--ingest", type=int, default=1000, help="messages per ingest measurement [1000]")
    ap.add_argument("--runs", type=int, default=3, help="runs per measurement; the median is reported [3]")
    ap.add_argument("--download-sample", type=int, default=2000, help="blobs downloaded per run [2000]")
    ap.add_argument("--no-cyrus", action="store_true", help="skip the Cyrus reference column")
    ap.add_argument("--json", metavar="FILE", help="also write all results as JSON")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directories")
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # clean up servers and temp dirs on SIGTERM too

    from mailsrv.seed import MailGenerator

    messages = [m.raw for m in MailGenerator("ingest@example.org", 4242, args.ingest)]
    print(f"ingest corpus: {len(messages)} messages from mailsrv's seed generator, "
          f"{sum(map(len, messages)) / len(messages) / 1024:.0f} KiB mean; {args.runs} runs, medians", flush=True)
    base = Path(tempfile.mkdtemp(prefix="bench-mailsrv-", dir="/tmp"))
    base.chmod(0o755)  # Cyrus runs as the 'cyrus' user and must reach its testbed directory inside
    servers: list[Server] = []
    results: dict[str, dict[str, Any] | str] = {}
    try:
        print(f"mailsrv: starting and seeding {args.count} messages …", flush=True)
        servers.append(start_mailsrv(base / "mailsrv", args.count))
        if args.no_cyrus:
            results["cyrus"] = "skipped: --no-cyrus"
        else:
            print(f"cyrus: starting the testbed and bulk-loading {args.count} messages …", flush=True)
            try:
                servers.append(start_cyrus(base / "cyrus", args.count))
            except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
                results["cyrus"] = f"skipped: {exc}"
        for s in servers:
            print(f"{s.name}: measuring …", flush=True)
            results[s.name] = measure(s, messages, args.runs, args.download_sample)
    finally:
        for s in servers:
            s.stop()
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
    print()
    measured = [s for s in servers if isinstance(results.get(s.name), dict)]
    print(table(measured, results))
    print()
    for s in measured:
        for n in s.notes:
            print("note:", n)
    for name, why in results.items():
        if isinstance(why, str):
            print(f"note: {name} column {why}")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "results": results}, indent=2, default=str))


if __name__ == "__main__":
    main()
