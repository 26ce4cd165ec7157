"""Benchmark ``mail-backup restore`` against a naive restore loop, into mailsrv and into Cyrus IMAP 3.6.

The source is an export of ``--count`` messages (default 10,000) from mailsrv's seed generator (mixed MIME,
~24 KiB mean, threads, attachments, nested folders, keywords), written directly with the export format's
``AccountWriter``. Each run restores it into a fresh, empty account of each server twice:

* **mail-backup restore** — ``run_restore`` as the command runs it: mailbox mapping, detection of what is
  present, uploads and ``Email/import`` batches in parallel within the server's limits, then the full
  verification (Blob digests on mailsrv; every message downloaded and hashed on Cyrus, which has none);
* **naive loop** — the Vandelay-style baseline: the mailboxes are created, then for each message one
  upload and one ``Email/import`` request with that single message, strictly one after the other.

Reported: messages/s of each (median of ``--runs``), the write phase of mail-backup alone (without
detection and verification), and the ratio. Run as root on Debian 12 for the Cyrus column; without it the
column is skipped with the reason. Usage: ``python bench/bench_restore.py --help``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from backup.actions.restore import RestoreOptions, run_restore  # noqa: E402
from backup.exportdir import EmailRecord, ExportDir, MailboxRecord  # noqa: E402
from backup.exportdir.account import AccountWriter, new_run_id  # noqa: E402
from backup.exportdir.manifest import AccountInfo, Counts, Manifest, RunInfo, ServerInfo, ToolInfo  # noqa: E402
from backup.output import Output  # noqa: E402
from mailsrv.client import BasicAuth, EmailImport, JmapClient  # noqa: E402
from mailsrv.client.calls import Invocation  # noqa: E402
from mailsrv.config import parse_config  # noqa: E402
from mailsrv.seed import FOLDERS, MailGenerator  # noqa: E402
from tests.conftest import start_mailsrv as launch_mailsrv  # noqa: E402
from tests.cyrus import start_cyrus as launch_cyrus  # noqa: E402

PASSWORD = "bench-Password-1"
ACCOUNT = "source"


def rfc3339(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


# -- the source export -------------------------------------------------------------------------------------
def build_export(root: Path, count: int) -> tuple[int, int]:
    """An export of ``count`` generated messages for account ``source``; returns (messages, bytes)."""
    ExportDir(root).ensure()
    writer = AccountWriter(ExportDir(root).account(ACCOUNT), new_run_id())
    ids: dict[tuple[str, ...], str] = {}
    boxes: list[MailboxRecord] = []
    for path, role, _ in FOLDERS:
        for depth in range(1, len(path) + 1):
            sub = path[:depth]
            if sub not in ids:
                ids[sub] = f"m{len(ids)}"
                boxes.append(MailboxRecord(id=ids[sub], name=sub[-1], parent_id=ids.get(sub[:-1]), role=role if sub == path else None,
                                           path=list(sub)))
    records: list[EmailRecord] = []
    total = 0
    for n, m in enumerate(MailGenerator("source@example.org", 1, count)):
        sha = writer.put_blob(m.raw)
        total += len(m.raw)
        records.append(EmailRecord(id=f"e{n}", blob_id=sha, sha256=sha, size=len(m.raw), mailbox_ids=[ids[m.folder]],
                                   keywords=dict(m.keywords), received_at=rfc3339(m.received_at),
                                   message_id=[m.message_id] if m.message_id else None))
    records.sort(key=lambda r: r.id)
    writer.write_jsonl("emails", records)
    writer.write_json("mailboxes", [b.model_dump() for b in boxes])
    now = rfc3339(time.time())
    manifest = Manifest(account=AccountInfo(name=ACCOUNT, id="a"), server=ServerInfo(profile="embedded", url="http://bench.invalid"),
                        tool=ToolInfo(version="bench"), run=RunInfo(id=writer.run_id, started=now, finished=now, mode="full"),
                        counts=Counts(emails=len(records), mailboxes=len(boxes), blobs=len({r.sha256 for r in records}), bytes=total),
                        files=writer.files)
    writer.commit(manifest, {r.sha256 for r in records})
    return len(records), total


# -- servers -------------------------------------------------------------------------------------------------
@dataclass
class Server:
    name: str
    url: str
    server_cfg: dict[str, Any]
    new_account: Callable[[], str]
    stop: Callable[[], None]
    credentials: dict[str, dict[str, str]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def client(self, user: str) -> JmapClient:
        return JmapClient(self.url, auth=BasicAuth(user, PASSWORD))

    def config(self, export: Path, state: Path) -> Any:
        data: dict[str, Any] = {"server": self.server_cfg, "export": {"dir": str(export)}, "state": {"dir": str(state)}}
        if self.credentials:
            data["accounts"] = {"credentials": self.credentials}
        return parse_config(data, "bench")


def start_mailsrv(base: Path) -> Server:
    srv = launch_mailsrv(base)  # the launcher the tests use: run-time ports, admin and master logins
    counter = iter(range(1, 1000))

    def new_account() -> str:
        name = f"r{next(counter)}"
        srv.add_account(name, PASSWORD)
        return name

    server = {"profile": "embedded", "url": srv.url, "admin_user": "admin", "admin_password_file": str(base / "admin.pw"),
              "master_user": "master", "master_password_file": str(base / "master.pw")}
    return Server("mailsrv", srv.url, server, new_account, srv.stop)


def start_cyrus(base: Path, accounts: int) -> Server:
    users = [f"r{n}" for n in range(1, accounts + 1)]
    bed = launch_cyrus(base, users=tuple(users), password=PASSWORD, attempts=2)  # the tests' launcher
    (base / "user.pw").write_text(PASSWORD + "\n")
    pending = iter(users)
    creds = {u: {"user": u, "password_file": str(base / "user.pw")} for u in users}
    return Server("cyrus", bed.url, {"profile": "generic", "url": bed.url}, lambda: next(pending), bed.stop, creds)


# -- the two restores --------------------------------------------------------------------------------------
def restore_ours(srv: Server, export: Path, state: Path, dest: str) -> tuple[float, dict[str, Any]]:
    cfg = srv.config(export, state)
    opts = RestoreOptions(account=ACCOUNT, into=dest, objects={"mail"})
    t0 = time.monotonic()
    report = run_restore(cfg, opts, Output(quiet=True))
    seconds = time.monotonic() - t0
    data = report.to_json()
    if data["emails"]["imported"] != data["emails"]["selected"]:
        raise RuntimeError(f"{srv.name}: mail-backup restored {data['emails']['imported']} of {data['emails']['selected']}")
    return seconds, data


def restore_naive(srv: Server, export: Path, dest: str) -> float:
    """Mailboxes first, then one upload + one single-message Email/import request per message, sequentially."""
    from backup.exportdir.account import AccountReader

    reader = AccountReader(ExportDir(export).account(ACCOUNT))
    boxes = reader.mailboxes()
    records = list(reader.emails())
    t0 = time.monotonic()
    with srv.client(dest) as client:
        aid = client.account_id
        existing = {m.role: m.id for m in client.mailboxes() if m.role}
        mapped: dict[str, str] = {}
        for box in sorted(boxes, key=lambda b: len(b.path)):
            if box.role and box.role in existing:
                mapped[box.id] = existing[box.role]
                continue
            obj = {"name": box.name, "parentId": mapped.get(box.parent_id) if box.parent_id else None}
            resp = client.request([Invocation("Mailbox/set", {"accountId": aid, "create": {"m": obj}}, "c")])
            mapped[box.id] = resp.args("c")["created"]["m"]["id"]
        for rec in records:
            up = client.upload(reader.blob_path(rec.sha256), content_type="message/rfc822")
            result = client.email_import({"e": EmailImport(up.blob_id, {mapped[m]: True for m in rec.mailbox_ids}, rec.keywords,
                                                           rec.received_at)})
            if result.email_id("e") is None:
                raise RuntimeError(f"{srv.name}: the naive loop could not import {rec.id}: {result.not_created}")
    return time.monotonic() - t0


# -- the run -------------------------------------------------------------------------------------------------
def measure(srv: Server, export: Path, state: Path, count: int, runs: int) -> dict[str, Any]:
    out: dict[str, list[float]] = {"ours": [], "ours_write": [], "ours_verify": [], "naive": []}
    for run in range(runs):
        order = ("ours", "naive") if run % 2 == 0 else ("naive", "ours")
        for which in order:
            dest = srv.new_account()
            if which == "ours":
                seconds, data = restore_ours(srv, export, state, dest)
                out["ours"].append(seconds)
                out["ours_write"].append(data["timings"].get("write", 0.0))
                out["ours_verify"].append(data["timings"].get("verify", 0.0))
                ok = data["verification"]["ok"]
                print(f"  {srv.name} run {run + 1}: mail-backup restore {seconds:.1f} s (write {data['timings'].get('write', 0):.1f} s, "
                      f"verify {data['timings'].get('verify', 0):.1f} s, verification {'OK' if ok else 'MISMATCH'})", file=sys.stderr)
                if not ok:
                    srv.notes.append(f"{srv.name}: the verification reported {len(data['verification']['mismatches'])} mismatches "
                                     f"(e.g. {data['verification']['mismatches'][0]['detail'][:120]})")
            else:
                seconds = restore_naive(srv, export, dest)
                out["naive"].append(seconds)
                print(f"  {srv.name} run {run + 1}: naive loop {seconds:.1f} s", file=sys.stderr)
    med = {k: statistics.median(v) for k, v in out.items() if v}
    return {"runs": out, "median": med, "count": count}


def table(results: dict[str, dict[str, Any] | str], count: int, size: int) -> str:
    names = list(results)
    rows: list[list[str]] = []

    def rate(name: str, key: str) -> str:
        r = results[name]
        if isinstance(r, str):
            return "skipped"
        return f"{count / r['median'][key]:,.0f} msg/s ({r['median'][key]:.1f} s)"

    def ratio(name: str, key: str) -> str:
        r = results[name]
        if isinstance(r, str):
            return "—"
        return f"{r['median']['naive'] / r['median'][key]:.1f}x"

    rows.append(["mail-backup restore (whole run, incl. verification)", *(rate(n, "ours") for n in names)])
    rows.append(["  write phase only (uploads, imports, merges)", *(rate(n, "ours_write") for n in names)])
    rows.append(["naive loop (1 upload + 1 Email/import per message)", *(rate(n, "naive") for n in names)])
    rows.append(["ratio, whole run / naive", *(ratio(n, "ours") for n in names)])
    rows.append(["ratio, write phase / naive", *(ratio(n, "ours_write") for n in names)])
    header = ["measurement", *names]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = [f"restore of {count:,} messages ({size / 1e6:.0f} MB), median of the runs"]
    lines.append("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--count", type=int, default=10_000, help="messages in the restored export [10000]")
    ap.add_argument("--runs", type=int, default=3, help="runs per measurement; the median is reported [3]")
    ap.add_argument("--no-cyrus", action="store_true", help="skip the Cyrus column")
    ap.add_argument("--json", metavar="FILE", help="also write all results as JSON")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = ap.parse_args()
    base = Path(tempfile.mkdtemp(prefix="bench-restore-", dir="/tmp"))
    os.chmod(base, 0o755)  # Cyrus runs as its own user
    servers: list[Server] = []
    results: dict[str, dict[str, Any] | str] = {}
    notes: list[str] = []
    try:
        t0 = time.monotonic()
        count, size = build_export(base / "export", args.count)
        print(f"export of {count} messages ({size / 1e6:.0f} MB) built in {time.monotonic() - t0:.0f} s", file=sys.stderr)
        servers.append(start_mailsrv(base / "mailsrv"))
        if args.no_cyrus:
            results["cyrus"] = "skipped (--no-cyrus)"
        else:
            try:
                servers.append(start_cyrus(base / "cyrus", 2 * args.runs))
            except (RuntimeError, subprocess.TimeoutExpired) as exc:
                results["cyrus"] = f"skipped: {exc}"
        for srv in servers:
            results[srv.name] = measure(srv, base / "export", base / f"state-{srv.name}", count, args.runs)
            notes += srv.notes
        ordered: dict[str, dict[str, Any] | str] = {n: results[n] for n in ("mailsrv", "cyrus") if n in results}
        print(table(ordered, count, size))
        for name, r in ordered.items():
            if isinstance(r, str):
                print(f"{name}: {r}")
        for n in notes:
            print(f"note: {n}")
        if args.json:
            Path(args.json).write_text(json.dumps({"count": count, "bytes": size, "results": ordered}, indent=1, default=str))
    finally:
        for srv in servers:
            srv.stop()
        if args.keep:
            print(f"kept {base}", file=sys.stderr)
        else:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
