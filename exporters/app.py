"""The exporter as a whole: sources, their collectors in one explicit registry, and the HTTP listener."""

from __future__ import annotations

import ssl
import threading

from prometheus_client import CollectorRegistry
from prometheus_client.process_collector import ProcessCollector

from mailsrv.config import Config, ConfigError, read_secret, split_listen

from . import __version__
from .collectors import build_sources
from .httpd import ExporterHTTPServer, tls_context
from .poller import HealthCollector, PolledCollector

PASSWORD_ENV = "MAILSIDECAR_EXPORTER_PASSWORD"  # noqa: S105 - a variable name


class Exporter:
    """Builds every source from the config; :meth:`start` begins polling, :meth:`serve` opens the listener."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.polled = [PolledCollector(s) for s in build_sources(cfg)]
        self.registry = CollectorRegistry(auto_describe=False)
        for p in self.polled:
            self.registry.register(p)
        self.registry.register(HealthCollector(self.polled, __version__))
        ProcessCollector(registry=self.registry)
        self.credentials = self._credentials()
        self.tls = self._tls()
        self.http: ExporterHTTPServer | None = None

    def _credentials(self) -> tuple[str, str] | None:
        e = self.cfg.exporter
        if not e.auth_user:
            if e.auth_password_file:
                raise ConfigError("exporter.auth_password_file: set exporter.auth_user too (or remove the password file)")
            return None
        if ":" in e.auth_user:
            raise ConfigError("exporter.auth_user: must not contain ':'")
        password = read_secret(e.auth_password_file, PASSWORD_ENV, "exporter.auth_password_file")
        return e.auth_user, password or ""

    def _tls(self) -> ssl.SSLContext | None:
        e = self.cfg.exporter
        if bool(e.tls_cert_file) != bool(e.tls_key_file):
            raise ConfigError("exporter.tls_cert_file / tls_key_file: set both to serve HTTPS, or neither")
        if not e.tls_cert_file:
            return None
        try:
            return tls_context(e.tls_cert_file, e.tls_key_file)
        except FileNotFoundError as exc:
            raise ConfigError(f"exporter.tls_cert_file / tls_key_file: {exc.filename}: no such file") from None
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"exporter.tls_cert_file / tls_key_file: cannot load the certificate and key: {exc}") from None

    def poll_all_once(self) -> list[str]:
        """One poll of every source, in parallel (used by ``check``); returns the sources still polling after
        their timeout."""
        threads = [threading.Thread(target=p.poll_once, daemon=True) for p in self.polled]
        for t in threads:
            t.start()
        stuck = []
        for t, p in zip(threads, self.polled, strict=True):
            t.join(p.source.timeout + 1)
            if t.is_alive():
                stuck.append(p.source.name)
        return stuck

    def start(self) -> None:
        for p in self.polled:
            p.start()

    def serve(self) -> ExporterHTTPServer:
        """Bind the listener (raises ``OSError`` when the address is unusable) and serve in a thread."""
        host, port = split_listen(self.cfg.exporter.listen)
        self.http = ExporterHTTPServer((host, port), self.registry, tls=self.tls, credentials=self.credentials)
        self.http.serve_in_thread()
        return self.http

    def stop(self) -> None:
        if self.http is not None:
            self.http.shutdown()
            self.http.server_close()
        for p in self.polled:
            p.stop()
