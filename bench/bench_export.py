"""Benchmark ``mail-backup export``: full export and no-change incremental, side by side with mbsync.

In one run:

* mailsrv: an account seeded with ``mailsrv seed --count N`` (default 10,000) — full export (msgs/s, MB/s,
  peak RSS), then a no-change incremental run on the same export; and the same no-change incremental for an
  account of ``--big`` messages (default 100,000; 0 skips it);
* Cyrus IMAP 3.6 (the shared testbed, ``cyrus-testbed bulk USER N``) as a generic JMAP server: the same two
  measurements;
* mbsync (Debian isync, ``/usr/bin/mbsync``) pulling the same Cyrus account over IMAP into an empty Maildir, and
  its no-change rerun — the baseline; the last column is mail-backup's figure divided by mbsync's.

Every figure is the median of ``--runs`` runs (default 3); each run starts from an empty export directory /
Maildir. ``mail-backup`` and ``mbsync`` run as separate processes; peak RSS is that process's ``ru_maxrss``.
Run as root on Debian 12 (the Cyrus testbed installs packages on first use). ``--json FILE`` keeps every run.
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.conftest import MailsrvProc, start_mailsrv  # noqa: E402  (the launchers the tests use)
from tests.cyrus import CyrusTestbed, start_cyrus  # noqa: E402

PASSWORD = "bench-Password-1"
MAIL_BACKUP = [sys.executable, "-c", "import sys; from backup.cli import main; sys.exit(main())"]


@dataclass
class Run:
    seconds: float
    rss_mb: float
    messages: int
    bytes: int
    ok: bool
    detail: str = ""

    @property
    def msgs_per_s(self) -> float:
        return self.messages / self.seconds if self.seconds else 0.0

    @property
    def mb_per_s(self) -> float:
        return self.bytes / 1e6 / self.seconds if self.seconds else 0.0


def measured(cmd: list[str], env: dict[str, str] | None = None, cwd: Path | None = None) -> tuple[float, float, int, str, str]:
    """Run ``cmd``; wall seconds, peak RSS (MB) of that process, exit code, stdout, stderr."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env, cwd=cwd)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return seconds, usage.ru_maxrss / 1024, proc.returncode, out.read().decode(errors="replace"), err.read().decode(errors="replace")


# -- mail-backup ----------------------------------------------------------------------------------------------
def backup_config(path: Path, server: dict[str, Any], export_dir: Path, credentials: dict[str, dict[str, str]] | None = None) -> Path:
    lines = ["[server]"] + [f"{k} = {json.dumps(v)}" for k, v in server.items()]
    for name, cred in (credentials or {}).items():
        lines += [f"[accounts.credentials.{name}]"] + [f"{k} = {json.dumps(v)}" for k, v in cred.items()]
    lines += ["[export]", f"dir = {json.dumps(str(export_dir))}", "[state]", f"dir = {json.dumps(str(export_dir) + '-state')}"]
    path.write_text("\n".join(lines) + "\n")
    return path


def export_run(config: Path, account: str) -> Run:
    seconds, rss, code, out, err = measured([*MAIL_BACKUP, "--config", str(config), "export", "--account", account, "--json"])
    try:
        (acct,) = json.loads(out.strip().splitlines()[-1])["accounts"]
    except (ValueError, IndexError, KeyError):
        return Run(seconds, rss, 0, 0, False, err.strip()[-300:])
    return Run(seconds, rss, int(acct["fetched_messages"]) or int(acct["messages"]), int(acct["fetched_bytes"]) or int(acct["bytes"]),
               code == 0, f"{acct['mode']}, {acct['messages']} emails, fetched {acct['fetched_messages']}")


def export_pair(work: Path, server: dict[str, Any], account: str, runs: int, creds: dict[str, dict[str, str]] | None = None,
                full: bool = True) -> tuple[list[Run], list[Run]]:
    """``runs`` times (full export into an empty directory, then a no-change incremental on it)."""
    fulls: list[Run] = []
    incs: list[Run] = []
    for n in range(runs if full else 1):
        d = work / f"export-{account}-{n}"
        config = backup_config(work / f"backup-{account}-{n}.toml", server, d, creds)
        fulls.append(export_run(config, account))
        incs.append(export_run(config, account))
        if not full:
            for _ in range(runs - 1):
                incs.append(export_run(config, account))
        shutil.rmtree(d, ignore_errors=True)
        shutil.rmtree(str(d) + "-state", ignore_errors=True)
    return fulls, incs


# -- mailsrv ----------------------------------------------------------------------------------------------------
def mailsrv_server(srv: MailsrvProc) -> dict[str, Any]:
    """The ``[server]`` section for mail-backup against a mailsrv started by ``tests.conftest.start_mailsrv``."""
    return {"profile": "embedded", "url": srv.url, "admin_password_file": str(srv.dir / "admin.pw"),
            "master_user": "master", "master_password_file": str(srv.dir / "master.pw")}


# -- Cyrus + mbsync -----------------------------------------------------------------------------------------------


def mbsync_pair(work: Path, cyrus: CyrusTestbed, user: str, runs: int) -> tuple[list[Run], list[Run]]:
    fulls: list[Run] = []
    incs: list[Run] = []
    for n in range(runs):
        md = work / f"maildir-{n}"
        md.mkdir(parents=True)
        rc = work / f"mbsyncrc-{n}"
        rc.write_text(f"IMAPAccount cyrus\nHost 127.0.0.1\nPort {cyrus.env['IMAP_PORT']}\nUser {user}\nPass {cyrus.env['PASSWORD']}\n"
                      f"SSLType None\nAuthMechs LOGIN\n\nIMAPStore remote\nAccount cyrus\n\nMaildirStore local\nPath {md}/\n"
                      f"Inbox {md}/INBOX\nSubFolders Verbatim\n\nChannel bench\nFar :remote:\nNear :local:\nPatterns *\n"
                      "Create Near\nSync Pull\nSyncState *\n")
        for out in (fulls, incs):
            seconds, rss, code, _, err = measured(["mbsync", "-q", "-c", str(rc), "-a"])
            files = [p for p in md.rglob("*") if p.is_file() and p.parent.name in ("cur", "new")]
            out.append(Run(seconds, rss, len(files), sum(p.stat().st_size for p in files), code == 0, err.strip()[-200:]))
        incs[-1].messages, incs[-1].bytes = 0, 0  # the rerun fetches nothing
        shutil.rmtree(md, ignore_errors=True)
    return fulls, incs


# -- report -------------------------------------------------------------------------------------------------------
@dataclass
class Column:
    name: str
    runs: dict[str, list[Run]] = field(default_factory=dict)

    def median(self, row: str, attr: str) -> float | None:
        runs = [r for r in self.runs.get(row, []) if r.ok]
        return statistics.median(getattr(r, attr) for r in runs) if runs else None


ROWS = [
    ("full", "seconds", "full export: time (s)", "{:.1f}"),
    ("full", "msgs_per_s", "full export: messages/s", "{:.0f}"),
    ("full", "mb_per_s", "full export: MB/s", "{:.1f}"),
    ("full", "rss_mb", "full export: peak RSS (MB)", "{:.0f}"),
    ("inc", "seconds", "no-change incremental: time (s)", "{:.2f}"),
    ("inc", "rss_mb", "no-change incremental: peak RSS (MB)", "{:.0f}"),
    ("big_inc", "seconds", "no-change incremental, big account: time (s)", "{:.2f}"),
    ("big_inc", "rss_mb", "no-change incremental, big account: peak RSS (MB)", "{:.0f}"),
]


def table(columns: list[Column], ratio_of: tuple[str, str] | None) -> str:
    head = ["measurement", *[c.name for c in columns]] + (["mail-backup / mbsync"] if ratio_of else [])
    rows = [head]
    by_name = {c.name: c for c in columns}
    for row, attr, label, fmt in ROWS:
        values = [c.median(row, attr) for c in columns]
        if all(v is None for v in values):
            continue
        line = [label] + [fmt.format(v) if v is not None else "-" for v in values]
        if ratio_of:
            a, b = by_name[ratio_of[0]].median(row, attr), by_name[ratio_of[1]].median(row, attr)
            line.append(f"{a / b:.2f}x" if a is not None and b else "-")
        rows.append(line)
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    out = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    out.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=10_000, help="messages of the benchmark account [10000]")
    ap.add_argument("--big", type=int, default=100_000, help="messages of the big account for the no-change incremental; 0 skips [100000]")
    ap.add_argument("--runs", type=int, default=3, help="runs per measurement (the median is shown) [3]")
    ap.add_argument("--no-cyrus", action="store_true", help="skip Cyrus and mbsync")
    ap.add_argument("--json", metavar="FILE", help="write every run as JSON")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-export-", dir="/tmp"))
    work.chmod(0o755)  # Cyrus runs as the cyrus user and must reach its directory
    columns: list[Column] = []
    notes: list[str] = []
    setup: dict[str, float] = {}
    try:
        srv = start_mailsrv(work / "mailsrv")
        try:
            srv.add_account("reader", PASSWORD)
            t = time.perf_counter()
            srv.cli("seed", "--account", "reader", "--count", str(args.count))
            setup["mailsrv seed"] = time.perf_counter() - t
            col = Column(f"mailsrv ({args.count:,} msgs, JMAP)")
            col.runs["full"], col.runs["inc"] = export_pair(work, mailsrv_server(srv), "reader", args.runs)
            if args.big:
                srv.add_account("big", PASSWORD)
                t = time.perf_counter()
                srv.cli("seed", "--account", "big", "--count", str(args.big), "--random-seed", "3")
                setup["mailsrv seed big"] = time.perf_counter() - t
                full, inc = export_pair(work, mailsrv_server(srv), "big", args.runs, full=False)
                col.runs["big_full"], col.runs["big_inc"] = full, inc
                notes.append(f"big account: {args.big} messages; its one full export took {full[0].seconds:.0f} s "
                             f"({full[0].msgs_per_s:.0f} msgs/s, peak RSS {full[0].rss_mb:.0f} MB)")
            columns.append(col)
        finally:
            srv.stop()

        if not args.no_cyrus:
            try:
                if os.geteuid() != 0:
                    raise RuntimeError("the Cyrus testbed needs root")
                cyrus = start_cyrus(work / "cyrus", users=("reader",))  # the tests' launcher
            except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
                notes.append(f"Cyrus and mbsync columns skipped: {exc}")
            else:
                try:
                    t = time.perf_counter()
                    cyrus.bulk("reader", args.count, timeout=7200)
                    setup["cyrus bulk"] = time.perf_counter() - t
                    (work / "cyrus.pw").write_text(cyrus.env["PASSWORD"] + "\n")
                    server = {"profile": "generic", "url": f"http://127.0.0.1:{cyrus.env['JMAP_PORT']}"}
                    creds = {"reader": {"user": "reader", "password_file": str(work / "cyrus.pw")}}
                    col = Column(f"cyrus ({args.count:,} msgs, JMAP)")
                    col.runs["full"], col.runs["inc"] = export_pair(work, server, "reader", args.runs, creds)
                    columns.append(col)
                    if shutil.which("mbsync"):
                        base = Column(f"mbsync from cyrus ({args.count:,} msgs, IMAP)")
                        base.runs["full"], base.runs["inc"] = mbsync_pair(work, cyrus, "reader", args.runs)
                        columns.append(base)
                    else:
                        notes.append("mbsync column skipped: /usr/bin/mbsync not installed (apt-get install isync)")
                finally:
                    cyrus.stop()
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    names = [c.name for c in columns]
    ratio = (names[1], names[2]) if len(names) == 3 else None
    print(table(columns, ratio))
    for name, seconds in setup.items():
        print(f"setup: {name} {seconds:.0f} s")
    for c in columns:
        for row, runs in c.runs.items():
            for r in runs:
                if not r.ok:
                    print(f"FAILED run ({c.name}, {row}): {r.detail}")
    for n in notes:
        print(f"note: {n}")
    if args.json:
        Path(args.json).write_text(json.dumps({c.name: {row: [r.__dict__ for r in runs] for row, runs in c.runs.items()} for c in columns},
                                              indent=1))


if __name__ == "__main__":
    main()
