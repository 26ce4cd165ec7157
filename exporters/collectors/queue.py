"""Source ``queue``: the outbound queue from the management API, aggregated page by page.

Works on Stalwart's Community Edition (no ``queue_count`` gauge needed): v0.15 REST
``GET /api/queue/messages?values&limit=N&page=P`` (also mailsrv, the ``embedded`` profile) or v0.16
``x:QueuedMessage/query`` + ``/get``, through :meth:`ManagementClient.iter_queue`, which lists each message once.
Messages are folded into counters as they arrive, so memory stays flat whatever the queue size. Recipient
domains are bounded to the top N plus ``other``.
"""

from __future__ import annotations

import datetime as dt
import time
from collections import Counter
from dataclasses import dataclass, field

from prometheus_client.core import GaugeMetricFamily, Metric

from mailsrv.client.errors import AuthError, ConnectError, MailClientError, UnsupportedCapability
from mailsrv.client.management import ManagementClient, QueuedMessage

from ..poller import PollResult, SourceError

STATUSES = ("scheduled", "temp_fail", "perm_fail", "completed")
PENDING = ("scheduled", "temp_fail")


def _ts(value: str | None) -> float | None:
    if not value:
        return None
    try:
        parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    return parsed.timestamp()


def message_status(msg: QueuedMessage) -> str:
    """What happens next to a message: temp_fail (retrying after an error) > scheduled > perm_fail > completed."""
    kinds = {r.status for r in msg.recipients}
    for status in ("temp_fail", "scheduled", "perm_fail"):
        if status in kinds:
            return status
    return "completed"


def domain_of(address: str) -> str:
    return address.rpartition("@")[2].lower().strip() or "unknown"


@dataclass
class QueueStats:
    """The queue folded into bounded aggregates."""

    messages: Counter[str] = field(default_factory=Counter)
    recipients: Counter[str] = field(default_factory=Counter)
    domains: dict[str, Counter[str]] = field(default_factory=dict)  # status -> domain -> pending recipients
    bytes: int = 0
    oldest: float | None = None
    count: int = 0
    truncated: bool = False

    def add(self, msg: QueuedMessage) -> None:
        self.count += 1
        self.messages[message_status(msg)] += 1
        self.bytes += msg.size
        created = _ts(msg.created)
        if created is not None and (self.oldest is None or created < self.oldest):
            self.oldest = created
        for r in msg.recipients:
            self.recipients[r.status] += 1
            if r.status in PENDING:
                self.domains.setdefault(r.status, Counter())[domain_of(r.address)] += 1

    def top_domains(self, n: int) -> tuple[list[str], dict[str, Counter[str]]]:
        """The ``n`` domains with most pending recipients, and per status the counts with the rest as ``other``."""
        total: Counter[str] = Counter()
        for c in self.domains.values():
            total.update(c)
        top = [d for d, _ in sorted(total.items(), key=lambda kv: (-kv[1], kv[0]))[:n]]
        out: dict[str, Counter[str]] = {}
        for status in PENDING:
            counts = self.domains.get(status, Counter())
            shown = Counter({d: counts.get(d, 0) for d in top})
            shown["other"] = sum(v for d, v in counts.items() if d not in shown)
            out[status] = shown
        return top, out


class QueueSource:
    """Polls the management API's queue listing."""

    name = "queue"

    def __init__(self, client: ManagementClient, *, interval: float, timeout: float, page_size: int,
                 top_domains: int, max_messages: int) -> None:
        self.client = client
        self.interval = interval
        self.timeout = timeout
        self.page_size = page_size
        self.top_n = top_domains
        self.max_messages = max_messages

    def gather(self) -> QueueStats:
        stats = QueueStats()
        try:
            for msg in self.client.iter_queue(self.page_size):
                if stats.count >= self.max_messages:
                    stats.truncated = True
                    break
                stats.add(msg)
        except AuthError as exc:
            raise SourceError(f"{exc} (check [server] admin_user / admin_password_file)", "auth") from None
        except ConnectError as exc:
            raise SourceError(str(exc), "connect") from None
        except UnsupportedCapability as exc:
            raise SourceError(f"queue listing: {exc}", "protocol") from None
        except MailClientError as exc:
            raise SourceError(f"queue listing: {exc}", "protocol") from None
        return stats

    def poll(self) -> PollResult:
        stats = self.gather()
        return PollResult(self.families(stats, time.time()), ["queue listing truncated at queue_max_messages"] if stats.truncated else [])

    def families(self, stats: QueueStats, now: float) -> list[Metric]:
        msgs = GaugeMetricFamily(
            "mail_queue_messages", "Messages in the outbound queue, by what happens next "
            "(temp_fail: a recipient is retrying after an error; perm_fail: only failed recipients are left).",
            labels=["status"],
        )
        rcpts = GaugeMetricFamily("mail_queue_recipients", "Recipients of queued messages, by status.", labels=["status"])
        for status in STATUSES:
            msgs.add_metric([status], stats.messages.get(status, 0))
            rcpts.add_metric([status], stats.recipients.get(status, 0))
        size = GaugeMetricFamily("mail_queue_size_bytes", "Total size of the queued messages.", value=stats.bytes)
        oldest = GaugeMetricFamily(
            "mail_queue_oldest_message_age_seconds", "Age of the oldest queued message (0 when the queue is empty).",
            value=max(0.0, now - stats.oldest) if stats.oldest is not None else 0.0,
        )
        _, by_status = stats.top_domains(self.top_n)
        domains = GaugeMetricFamily(
            "mail_queue_domain_recipients",
            f"Pending recipients by destination domain (top {self.top_n}, the rest as 'other') and status.",
            labels=["domain", "status"],
        )
        for status, counts in by_status.items():
            for domain, n in counts.items():
                domains.add_metric([domain, status], n)
        truncated = GaugeMetricFamily("mail_queue_listing_truncated",
                                      "1 if the listing stopped at queue_max_messages (the other queue gauges are partial).",
                                      value=1.0 if stats.truncated else 0.0)
        out: list[Metric] = [msgs, rcpts, size, oldest, domains, truncated]
        running = self.client.queue_running
        if running is not None:
            out.append(GaugeMetricFamily("mail_queue_running", "1 if the queue is delivering, 0 if an operator paused it.",
                                         value=1.0 if running else 0.0))
        return out

    def close(self) -> None:
        self.client.close()
