"""mail-exporter: scrape latency and memory with 0, 10k and 100k messages queued in a live mailsrv.

The queue is filled straight into mailsrv's store (SMTP would take far longer for 100k) while mailsrv's queue
is paused, so nothing is delivered in between. For each size a fresh ``mail-exporter serve`` process watches
the server (embedded profile: mailserver, queue and backups sources); once its first full queue listing is in,
the bench scrapes /metrics sequentially and reports p50/p99 latency, the duration of one background queue
poll (what a scrape would cost if it listed the queue itself, as naive exporters do), and the exporter's
resident memory (current and peak).

    python bench/bench_exporter.py [--sizes 0,10000,100000] [--scrapes 300]
"""

from __future__ import annotations

import argparse
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mailsrv.server.store import Store
from tests.conftest import free_port, start_mailsrv, write_toml
from tests.test_exporter_support import parse_samples, val

DOMAINS = [f"dest{i}.example" for i in range(200)]
RAW = b"From: alice@example.org\r\nTo: someone@dest0.example\r\nSubject: bench\r\n\r\n" + b"x" * 2000 + b"\r\n"


def fill_queue(data_dir: Path, upto: int, rng: random.Random) -> None:
    """Add queued messages until ``upto`` are in the queue (1-3 recipients each, mixed statuses)."""
    store = Store(data_dir)
    try:
        have = store.db.one("SELECT COUNT(*) FROM queue_messages")[0]  # type: ignore[index]
        digest = store.blobs.put(RAW)
        now = time.time()
        with store.db.tx() as c:
            c.execute("INSERT OR IGNORE INTO blobs(hash, size, created) VALUES(?,?,?)", (digest, len(RAW), now))
            for n in range(have, upto):
                created = now - rng.uniform(0, 86400)
                cur = c.execute("INSERT INTO queue_messages(return_path, blob_hash, size, created, account_id) VALUES(?,?,?,?,NULL)",
                                ("alice@example.org", digest, len(RAW), created))
                qid = cur.lastrowid
                for r in range(rng.choice((1, 1, 1, 2, 3))):
                    status = rng.choice(("scheduled", "temp_fail", "temp_fail", "perm_fail"))
                    domain = DOMAINS[min(int(rng.paretovariate(1.2)) - 1, len(DOMAINS) - 1)]
                    c.execute("INSERT INTO queue_recipients(queue_id, address, status, retry_num, next_retry, expires, last_error) "
                              "VALUES(?,?,?,?,?,?,?)",
                              (qid, f"user{n}.{r}@{domain}", status, 1 if status != "scheduled" else 0, now + 3600, now + 5 * 86400,
                               "451 4.3.0 Try again later" if status == "temp_fail" else ""))
    finally:
        store.close()


def rss(pid: int) -> tuple[float, float]:
    """(current, peak) resident memory in MiB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def measure(srv_url: str, admin_pw: Path, state: Path, size: int, scrapes: int, work: Path) -> dict[str, float]:
    port = free_port()
    config = work / f"exporter-{size}.toml"
    write_toml(config, {
        "server": {"profile": "embedded", "url": srv_url, "admin_password_file": str(admin_pw)},
        "state": {"dir": str(state)},
        "exporter": {"listen": f"127.0.0.1:{port}", "mailserver_interval": 5, "queue_interval": 5, "queue_timeout": 600},
    })
    log = open(work / f"exporter-{size}.log", "ab")
    proc = subprocess.Popen([sys.executable, "-m", "exporters", "--config", str(config), "serve"], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/metrics"
    try:
        deadline = time.monotonic() + 900
        while True:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError(f"exporter never listed the queue of {size}; see {work}")
            try:
                s = parse_samples(requests.get(url, timeout=10).text)
            except requests.RequestException:
                time.sleep(0.2)
                continue
            listed = sum(val(s, "mail_queue_messages", status=st) or 0 for st in ("scheduled", "temp_fail", "perm_fail", "completed"))
            if val(s, "mail_exporter_source_up", source="queue") == 1 and listed == size:
                poll = val(s, "mail_exporter_source_poll_duration_seconds", source="queue") or 0.0
                break
            time.sleep(0.2)
        session = requests.Session()
        latencies = []
        for _ in range(scrapes):  # background polls keep running meanwhile
            t0 = time.perf_counter()
            r = session.get(url, timeout=10)
            latencies.append(time.perf_counter() - t0)
            assert r.status_code == 200
        latencies.sort()
        cur, peak = rss(proc.pid)
        return {"p50": statistics.median(latencies) * 1000, "p99": latencies[int(len(latencies) * 0.99) - 1] * 1000,
                "poll": poll, "rss": cur, "peak": peak, "bytes": len(r.content)}
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        log.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="0,10000,100000")
    ap.add_argument("--scrapes", type=int, default=300)
    args = ap.parse_args()
    sizes = [int(x) for x in args.sizes.split(",")]
    rng = random.Random(7)
    with tempfile.TemporaryDirectory(prefix="bench-exporter-") as tmp:
        work = Path(tmp)
        srv = start_mailsrv(work / "mailsrv")
        state = work / "state"
        state.mkdir()
        try:
            r = requests.patch(f"{srv.url}/api/queue/status/stop", auth=srv.admin, timeout=10)
            r.raise_for_status()  # paused: the queue only grows, nothing is delivered or bounced
            rows = []
            for size in sizes:
                t0 = time.monotonic()
                fill_queue(srv.data_dir, size, rng)
                filled = time.monotonic() - t0
                result = measure(srv.url, srv.dir / "admin.pw", state, size, args.scrapes, work)
                rows.append((size, result))
                print(f"  {size:>7} queued (filled in {filled:.1f}s): scrape p50 {result['p50']:.1f} ms, "
                      f"queue poll {result['poll']:.2f}s", file=sys.stderr)
        finally:
            srv.stop()
    print()
    print(f"mail-exporter, {args.scrapes} sequential scrapes per size while the sources keep polling "
          "in the background (queue_interval 5 s)")
    print("| queued messages | scrape p50 | scrape p99 | scrape size | one queue poll (background) | exporter RSS | peak RSS |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for size, res in rows:
        print(f"| {size:,} | {res['p50']:.1f} ms | {res['p99']:.1f} ms | {res['bytes'] / 1024:.0f} KiB | {res['poll']:.2f} s | "
              f"{res['rss']:.0f} MiB | {res['peak']:.0f} MiB |")
    print("\nBaseline: kumina/postfix_exporter moved showq parsing to a 10 s background poll because large queues took "
          ">10 s per scrape (PR #52); an exporter listing the queue per scrape would pay the 'one queue poll' column on every scrape.")


if __name__ == "__main__":
    main()
