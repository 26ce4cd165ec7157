"""One source per thing mail-exporter watches; :func:`build_sources` turns the config into them."""

from __future__ import annotations

import logging
from urllib.parse import urlsplit

from mailsrv.client.errors import ConnectError, InsecureUrlError
from mailsrv.client.jmap import JmapClient
from mailsrv.client.management import ManagementClient, Stalwart015Management, Stalwart016Management
from mailsrv.client.profiles import Profile
from mailsrv.client.transport import BasicAuth, RetryPolicy, Transport
from mailsrv.config import Config, ConfigError, read_secret, split_listen

from ..poller import Source
from .backups import BackupsSource
from .mailserver import MailserverSource, NameScheme
from .probe import ProbeSource
from .queue import QueueSource
from .tls import TlsSource, parse_endpoint

log = logging.getLogger("mail_exporter")

METRICS_ENV = "MAILSIDECAR_METRICS_PASSWORD"
ADMIN_ENV = "MAILSIDECAR_ADMIN_PASSWORD"
PROBE_ENV = "MAILSIDECAR_PROBE_PASSWORD"
ONE_TRY = RetryPolicy(attempts=1)


def _transport(cfg: Config, auth: BasicAuth | None, timeout: float) -> Transport:
    try:
        return Transport(auth, ca_file=cfg.server.ca_file, allow_plain_http=cfg.server.allow_plain_http,
                         timeout=(timeout, timeout), retry=ONE_TRY)
    except ConnectError as exc:  # an unreadable ca_file
        raise ConfigError(f"server.ca_file: {exc}") from None


def mailserver_source(cfg: Config) -> MailserverSource | None:
    s, e = cfg.server, cfg.exporter
    if s.profile == "generic" and not s.metrics_url:
        log.info("source mailserver off: the generic profile has no metrics endpoint unless [server] metrics_url is set")
        return None
    url = s.metrics_url or s.url.rstrip("/") + "/metrics/prometheus"
    auth = None
    if s.metrics_user:
        password = read_secret(s.metrics_password_file, METRICS_ENV, "server.metrics_password_file")
        auth = BasicAuth(s.metrics_user, password or "")
    transport = _transport(cfg, auth, e.mailserver_timeout)
    _check_url(transport, url, "server.metrics_url")
    return MailserverSource(url, transport, NameScheme(s.profile, e.stalwart_metric_names),
                            interval=e.mailserver_interval, timeout=e.mailserver_timeout)


def queue_source(cfg: Config) -> QueueSource | None:
    s, e = cfg.server, cfg.exporter
    if s.profile == "generic":
        log.info("source queue off: the generic profile has no management API")
        return None
    admin = Profile(s, cfg.accounts).admin_auth()
    transport = _transport(cfg, admin, e.queue_timeout)
    _check_url(transport, s.url, "server.url")
    client: ManagementClient
    if s.profile == "stalwart-0.16":
        client = Stalwart016Management(JmapClient(s.url, session_url=s.jmap_session_url, auth=admin, transport=transport))
    else:
        client = Stalwart015Management(s.url, transport)
    return QueueSource(client, interval=e.queue_interval, timeout=e.queue_timeout, page_size=e.queue_page_size,
                       top_domains=e.queue_top_domains, max_messages=e.queue_max_messages)


def tls_source(cfg: Config) -> TlsSource | None:
    e = cfg.exporter
    if not e.tls_endpoints:
        return None
    endpoints = [parse_endpoint(u, f"exporter.tls_endpoints[{i}]") for i, u in enumerate(e.tls_endpoints)]
    return TlsSource(endpoints, ca_file=cfg.server.ca_file, interval=e.tls_interval, timeout=e.tls_timeout)


def probe_source(cfg: Config) -> ProbeSource | None:
    p, s = cfg.exporter.probe, cfg.server
    if not p.enabled:
        return None
    if not p.user:
        raise ConfigError("exporter.probe.user: the probe needs an account to log in with")
    password = read_secret(p.password_file, PROBE_ENV, "exporter.probe.password_file") or ""
    if p.submission:
        host, port = split_listen(p.submission)
    else:
        host, port = urlsplit(s.url).hostname or "localhost", 587 if p.tls == "starttls" else 465
    mail_from = p.mail_from or p.user
    if "@" not in mail_from:
        raise ConfigError("exporter.probe.mail_from: needs an e-mail address (the probe user is not one)")
    auth = BasicAuth(p.user, password)
    transport = _transport(cfg, auth, min(30.0, p.timeout))
    _check_url(transport, s.url, "server.url")
    jmap = JmapClient(s.url, session_url=s.jmap_session_url, auth=auth, transport=transport)
    return ProbeSource(host=host, port=port, tls=p.tls, user=p.user, password=password, mail_from=mail_from,
                       to=p.to or mail_from, jmap=jmap, ca_file=s.ca_file, interval=p.interval, timeout=p.timeout)


def _check_url(transport: Transport, url: str, key: str) -> None:
    try:
        transport.check(url, key)
    except InsecureUrlError as exc:
        raise ConfigError(f"{key}: {exc}") from None


def build_sources(cfg: Config) -> list[Source]:
    """The enabled sources; raises :class:`ConfigError` for anything the operator must fix first."""
    e = cfg.exporter
    sources: list[Source | None] = []
    if "mailserver" in e.sources:
        sources.append(mailserver_source(cfg))
    if "queue" in e.sources:
        sources.append(queue_source(cfg))
    if "backups" in e.sources:
        sources.append(BackupsSource(cfg.state.dir, interval=e.backups_interval, timeout=e.backups_timeout))
    if "tls" in e.sources:
        sources.append(tls_source(cfg))
    sources.append(probe_source(cfg))
    return [s for s in sources if s is not None]
