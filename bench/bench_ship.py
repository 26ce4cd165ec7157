"""mail-backup ship: first and second (unchanged) ship of a 10k-message export, side by side with plain restic.

The export (``--count`` messages from mailsrv's seed generator, ~24 KiB mean, spread over ``--accounts``
accounts) is written once with AccountWriter. Each run then uses fresh repositories and buckets and times,
as separate processes the way cron/systemd run them:

| row | what |
|---|---|
| restic local: mail-backup ship | ``mail-backup ship --target local`` (restic repository on local disk) |
| restic local: plain restic     | ``restic backup --json EXPORT_DIR`` into another fresh local repository (the baseline) |
| restic S3: mail-backup ship    | ``mail-backup ship --target s3restic`` (restic ``s3:`` on SeaweedFS over loopback) |
| restic S3: plain restic        | ``restic backup --json EXPORT_DIR`` to another prefix of the same SeaweedFS |
| native S3: mail-backup ship    | ``mail-backup ship --target s3native`` (boto3, content-addressed objects, no restic) |

Repositories are initialised before the clock starts (restic's key derivation is the same for both). "bytes
added" is restic's ``data_added`` (compressed, deduplicated) or, for the native target, the bytes uploaded.
The overhead column is mail-backup's time divided by plain restic's for the same repository kind. Every cell
is the median of ``--runs`` runs.

    python bench/bench_ship.py [--count 10000] [--accounts 4] [--runs 3] [--no-s3]
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
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from backup.exportdir import EmailRecord, ExportDir, Manifest
from backup.exportdir.account import AccountWriter, new_run_id
from backup.exportdir.manifest import AccountInfo, Counts, RunInfo, ServerInfo, ToolInfo
from mailsrv.seed import MailGenerator
from tests.seaweed import Seaweed, start_seaweed
from tests.test_export import to_toml

PASSWORD = "bench-password-not-secret"
CLI = [sys.executable, "-c", "import sys; from backup.cli import main; sys.exit(main())"]


def build_export(root: Path, count: int, accounts: int) -> tuple[int, int]:
    export = ExportDir(root)
    export.ensure()
    per = [count // accounts + (1 if i < count % accounts else 0) for i in range(accounts)]
    total_bytes = 0
    for i, n in enumerate(per):
        name = f"user{i}@example.org"
        w = AccountWriter(export.account(name), new_run_id())
        records = []
        for k, msg in enumerate(MailGenerator(name, 7, n)):
            sha = w.put_blob(msg.raw)
            total_bytes += len(msg.raw)
            records.append(EmailRecord(id=f"M{k:06d}", blob_id=f"B{sha[:20]}", sha256=sha, size=len(msg.raw), mailbox_ids=["INBOX"],
                                       keywords=msg.keywords, received_at="2026-11-20T10:00:00Z", message_id=None))
        w.write_jsonl("emails", records)
        w.write_json("mailboxes", [{"id": "INBOX", "name": "Inbox", "parent_id": None, "role": "inbox", "sort_order": 0,
                                    "is_subscribed": True, "path": ["Inbox"]}])
        now = "2026-11-21T02:45:00Z"
        w.commit(Manifest(account=AccountInfo(name=name, id=f"a{i}"), server=ServerInfo(profile="embedded", url="http://127.0.0.1"),
                          tool=ToolInfo(version="bench"), run=RunInfo(id=w.run_id, started=now, finished=now, mode="full"),
                          counts=Counts(emails=n, mailboxes=1, blobs=len({r.sha256 for r in records}), bytes=total_bytes),
                          files=w.files), {r.sha256 for r in records})
    return count, total_bytes


def restic_env(repo: str, pw: Path, cache: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    return {**os.environ, "RESTIC_REPOSITORY": repo, "RESTIC_PASSWORD_FILE": str(pw), "RESTIC_CACHE_DIR": str(cache), **(extra or {})}


def restic_init(env: dict[str, str]) -> None:
    subprocess.run(["restic", "init", "-q"], env=env, check=True, capture_output=True)


def plain_restic(env: dict[str, str], export: Path) -> tuple[float, int]:
    t = time.perf_counter()
    r = subprocess.run(["restic", "backup", "--json", "--host", "bench", str(export)], env=env, capture_output=True, text=True, check=True)
    elapsed = time.perf_counter() - t
    summary = next(json.loads(ln) for ln in reversed(r.stdout.splitlines()) if '"summary"' in ln)
    return elapsed, int(summary["data_added"])


def ship(config: Path, target: str, state: Path) -> tuple[float, int]:
    t = time.perf_counter()
    r = subprocess.run([*CLI, "--config", str(config), "ship", "--target", target], capture_output=True, text=True)
    elapsed = time.perf_counter() - t
    if r.returncode:
        raise SystemExit(f"ship to {target} failed ({r.returncode}): {r.stderr[-2000:]}")
    result = json.loads((state / "ship" / f"{target}.json").read_text())
    return elapsed, int(result["bytes"])


def one_run(base: Path, export: Path, weed: Seaweed | None) -> dict[str, tuple[float, int, float, int]]:
    base.mkdir(parents=True)
    pw = base / "pw"
    pw.write_text(PASSWORD)
    cache = base / "cache"
    state = base / "state"
    targets: list[dict[str, Any]] = [{"name": "local", "type": "restic", "repository": str(base / "repo-ship"), "password_file": str(pw),
                                      "cache_dir": str(cache), "host": "bench"}]
    restic_init(restic_env(str(base / "repo-ship"), pw, cache))
    restic_init(restic_env(str(base / "repo-plain"), pw, cache))
    s3env: dict[str, str] = {}
    if weed is not None:
        bucket = weed.bucket("bench")
        envfile = weed.env_file(base / "s3.env")
        s3env = {"AWS_ACCESS_KEY_ID": weed.access_key, "AWS_SECRET_ACCESS_KEY": weed.secret_key}
        (base / "s3.secret").write_text(weed.secret_key)
        targets.append({"name": "s3restic", "type": "restic", "repository": f"s3:{weed.endpoint}/{bucket}/ship", "password_file": str(pw),
                        "env_file": str(envfile), "cache_dir": str(cache), "host": "bench"})
        targets.append({"name": "s3native", "type": "s3", "endpoint_url": weed.endpoint, "bucket": bucket, "prefix": "native",
                        "region": "us-east-1", "access_key_id": weed.access_key, "secret_access_key_file": str(base / "s3.secret"),
                        "host": "bench", "connections": 16})
        restic_init(restic_env(f"s3:{weed.endpoint}/{bucket}/ship", pw, cache, s3env))
        restic_init(restic_env(f"s3:{weed.endpoint}/{bucket}/plain", pw, cache, s3env))
    config = base / "config.toml"
    config.write_text(to_toml({"export": {"dir": str(export)}, "state": {"dir": str(state)}, "targets": targets}))
    rows: dict[str, tuple[float, int, float, int]] = {}
    rows["restic local: mail-backup ship"] = (*ship(config, "local", state), *ship(config, "local", state))
    env = restic_env(str(base / "repo-plain"), pw, cache)
    rows["restic local: plain restic"] = (*plain_restic(env, export), *plain_restic(env, export))
    if weed is not None:
        rows["restic S3: mail-backup ship"] = (*ship(config, "s3restic", state), *ship(config, "s3restic", state))
        env = restic_env(f"s3:{weed.endpoint}/{bucket}/plain", pw, cache, s3env)
        rows["restic S3: plain restic"] = (*plain_restic(env, export), *plain_restic(env, export))
        rows["native S3: mail-backup ship"] = (*ship(config, "s3native", state), *ship(config, "s3native", state))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--count", type=int, default=10_000)
    ap.add_argument("--accounts", type=int, default=4)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--no-s3", action="store_true", help="skip the SeaweedFS rows")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = ap.parse_args()
    if shutil.which("restic") is None:
        raise SystemExit("restic is not installed (apt-get install restic)")
    tmp = Path(tempfile.mkdtemp(prefix="bench-ship-"))
    weed: Seaweed | None = None
    try:
        t = time.perf_counter()
        count, size = build_export(tmp / "export", args.count, args.accounts)
        print(f"export: {count} messages, {size / 1e6:.1f} MB in {args.accounts} accounts (written in {time.perf_counter() - t:.1f} s)")
        if not args.no_s3:
            weed = start_seaweed(tmp / "seaweed")
        runs = []
        for i in range(args.runs):
            runs.append(one_run(tmp / f"run{i}", tmp / "export", weed))
            print(f"run {i + 1}/{args.runs} done", file=sys.stderr)
        table(runs)
    finally:
        if weed is not None:
            weed.stop()
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)


def table(runs: list[dict[str, tuple[float, int, float, int]]]) -> None:
    med = {k: tuple(statistics.median(r[k][i] for r in runs) for i in range(4)) for k in runs[0]}
    head = (f"{'measurement':<32} {'1st ship s':>10} {'1st added':>11} {'2nd ship s':>10} {'2nd added':>10} "
            f"{'vs plain restic (1st/2nd)':>26}")
    print(head)
    print("-" * len(head))
    for k, (t1, b1, t2, b2) in med.items():
        base = "restic local: plain restic" if k.startswith("restic local") else "restic S3: plain restic"
        ratio = ""
        if "mail-backup" in k and base in med:
            ratio = f"{t1 / med[base][0]:.2f}x / {t2 / med[base][2]:.2f}x"
        print(f"{k:<32} {t1:>10.2f} {b1 / 1e6:>9.1f}MB {t2:>10.2f} {b2 / 1e3:>8.1f}kB {ratio:>26}")
    print(f"(median of {len(runs)} runs; native S3 compares with the restic S3 baseline: "
          f"{med['native S3: mail-backup ship'][0] / med['restic S3: plain restic'][0]:.2f}x / "
          f"{med['native S3: mail-backup ship'][2] / med['restic S3: plain restic'][2]:.2f}x)" if "native S3: mail-backup ship" in med
          else f"(median of {len(runs)} runs)")


if __name__ == "__main__":
    main()
