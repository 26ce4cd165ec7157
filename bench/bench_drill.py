"""What a restore drill costs, side by side with the restic checks an operator would otherwise run.

Fills mailsrv with ``--accounts`` accounts of ``--count`` seeded messages each, exports and ships them once to a
local restic repository, then times (median of ``--runs`` runs):

* ``mail-backup drill`` with the defaults (3 accounts x 20 messages per target) — the weekly job,
* ``mail-backup drill`` of every account and every message — the most a drill can do,
* ``restic check`` (structure only) and ``restic check --read-data`` (every pack read back) — the baseline.

    .venv/bin/python bench/bench_drill.py                        # 20 accounts x 200 messages, 3 runs
    .venv/bin/python bench/bench_drill.py --accounts 5 --count 50 --runs 1
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.conftest import start_mailsrv
from tests.test_drill import mail_backup, make_setup, restic_env


def timed(argv: list[str], env: dict[str, str] | None = None) -> float:
    t0 = time.monotonic()
    r = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=3600)
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(argv[:4])}… failed ({r.returncode}): {r.stderr[-800:]}")
    return time.monotonic() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--accounts", type=int, default=20)
    ap.add_argument("--count", type=int, default=200, help="messages per account")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = ap.parse_args()
    if shutil.which("restic") is None:
        raise SystemExit("restic is not installed (apt-get install restic)")
    base = Path(tempfile.mkdtemp(prefix="bench-drill-"))
    srv = start_mailsrv(base / "srv")
    try:
        names = [f"user{i:03d}" for i in range(args.accounts)]
        for n in names:
            srv.add_account(n)
        seed = ["seed", "--count", str(args.count), "--random-seed", "11"]
        for n in names:
            seed += ["--account", n]
        srv.cli(*seed)
        setup = make_setup(base / "backup", srv)
        t0 = time.monotonic()
        r = mail_backup(setup.config, "run")
        if r.returncode != 0:
            raise SystemExit(f"mail-backup run failed: {r.stderr[-800:]}")
        first_run = time.monotonic() - t0
        repo_bytes = sum(p.stat().st_size for p in setup.repo().rglob("*") if p.is_file())

        code = "import sys; from backup.cli import main; sys.exit(main())"
        cli = [sys.executable, "-c", code, "--config", str(setup.config)]
        env = {k: v for k, v in os.environ.items() if not k.startswith("MAILSIDECAR_")}
        renv = restic_env(setup)
        rows = {
            "mail-backup drill (3 accounts x 20 messages)": lambda: timed([*cli, "drill"], env),
            f"mail-backup drill (all {args.accounts} accounts, all messages)": lambda: timed(
                [*cli, "drill", "--accounts", str(args.accounts), "--messages", str(args.count * 2)], env),
            "restic check (baseline: structure only)": lambda: timed(["restic", "check"], renv),
            "restic check --read-data (baseline: every pack)": lambda: timed(["restic", "check", "--read-data"], renv),
        }
        results = {name: statistics.median(fn() for _ in range(args.runs)) for name, fn in rows.items()}
    finally:
        srv.stop()
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
    width = max(len(n) for n in results)
    print(f"\n{args.accounts} accounts x {args.count} messages; repository {repo_bytes / 1e6:.1f} MB; first run "
          f"(export + ship) {first_run:.1f} s; median of {args.runs} run(s)\n")
    print(f"{'measurement'.ljust(width)}  seconds")
    print(f"{'-' * width}  -------")
    for name, secs in results.items():
        print(f"{name.ljust(width)}  {secs:7.2f}")


if __name__ == "__main__":
    main()
