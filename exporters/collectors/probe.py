"""Source ``probe`` (off by default): end-to-end mail flow through the real listeners.

Each poll submits a small message over SMTP submission (STARTTLS or implicit TLS, then AUTH with the probe
account), polls the recipient mailbox over JMAP until the message is visible, and deletes it (plus any
earlier probe that arrived late). A failed stage is a result (``mail_probe_success`` 0), not a source
error, so the gauges always describe the latest attempt.
"""

from __future__ import annotations

import secrets
import smtplib
import ssl
import time
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from mailsrv.client.calls import Invocation
from mailsrv.client.errors import MailClientError
from mailsrv.client.jmap import JmapClient

from ..poller import PollResult

HEADER = "X-Mailsidecar-Probe"
STAGES = ("submit", "deliver", "cleanup")


class ProbeSource:
    """Sends one probe per poll and waits for it."""

    name = "probe"

    def __init__(self, *, host: str, port: int, tls: str, user: str, password: str, mail_from: str, to: str,
                 jmap: JmapClient, ca_file: str, interval: float, timeout: float) -> None:
        self.host, self.port, self.tls = host, port, tls
        self.user, self._password = user, password
        self.mail_from, self.to = mail_from, to
        self.jmap = jmap
        self.ctx = ssl.create_default_context(cafile=ca_file or None)
        self.interval = interval
        self.wait = timeout
        self.timeout = timeout + 60  # submission and cleanup on top of the delivery wait
        self.runs = {"success": 0, "failure": 0}
        self.last_success = 0.0

    def _message(self, token: str) -> bytes:
        msg = EmailMessage()
        msg["From"] = self.mail_from
        msg["To"] = self.to
        msg["Subject"] = f"mail-exporter probe {token}"
        msg["Date"] = formatdate(localtime=False, usegmt=True)
        msg["Message-ID"] = make_msgid(domain=self.mail_from.rpartition("@")[2] or None)
        msg[HEADER] = token
        msg.set_content("Automated delivery probe from mail-exporter; it deletes this message itself.\n")
        return msg.as_bytes()

    def submit(self, token: str) -> None:
        timeout = min(30.0, self.wait)
        client: smtplib.SMTP
        if self.tls == "tls":
            client = smtplib.SMTP_SSL(self.host, self.port, timeout=timeout, context=self.ctx)
        else:
            client = smtplib.SMTP(self.host, self.port, timeout=timeout)
        with client:
            client.ehlo()
            if self.tls == "starttls":
                client.starttls(context=self.ctx)
                client.ehlo()
            client.login(self.user, self._password)
            client.sendmail(self.mail_from, [self.to], self._message(token))

    def _query(self, value: list[str]) -> list[str]:
        aid = self.jmap.account_id
        resp = self.jmap.request([Invocation("Email/query", {"accountId": aid, "filter": {"header": value}}, "q")])
        ids = resp.args("q").get("ids")
        return [str(i) for i in ids] if isinstance(ids, list) else []

    def visible(self, token: str) -> bool:
        return bool(self._query([HEADER, token]))

    def cleanup(self) -> None:
        ids = self._query([HEADER])
        if ids:
            aid = self.jmap.account_id
            self.jmap.request([Invocation("Email/set", {"accountId": aid, "destroy": ids}, "d")])

    def poll(self) -> PollResult:
        token = secrets.token_hex(12)
        stages = dict.fromkeys(STAGES, 0.0)
        problems: list[str] = []
        started = time.monotonic()
        latency = 0.0
        try:
            self.submit(token)
            stages["submit"] = 1.0
            deadline = started + self.wait
            delay = 0.2
            while time.monotonic() < deadline:
                if self.visible(token):
                    stages["deliver"] = 1.0
                    latency = time.monotonic() - started
                    break
                time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
                delay = min(delay * 1.5, 5.0)
            else:
                problems.append(f"probe not visible over JMAP after {self.wait:g}s")
        except (OSError, smtplib.SMTPException) as exc:
            problems.append(f"submission to {self.host}:{self.port} failed: {_short(exc)}")
        except MailClientError as exc:
            problems.append(f"JMAP: {exc}")
        if stages["submit"]:
            try:
                self.cleanup()
                stages["cleanup"] = 1.0
            except MailClientError as exc:
                problems.append(f"cleanup over JMAP failed: {exc}")
        ok = stages["submit"] == stages["deliver"] == 1.0
        self.runs["success" if ok else "failure"] += 1
        if ok:
            self.last_success = time.time()
        return PollResult(self._families(ok, stages, latency or time.monotonic() - started), problems, degraded=not ok)

    def _families(self, ok: bool, stages: dict[str, float], duration: float) -> list[Metric]:
        success = GaugeMetricFamily("mail_probe_success", "1 if the last probe was submitted and became visible over JMAP.",
                                    value=1.0 if ok else 0.0)
        stage = GaugeMetricFamily("mail_probe_stage_success", "1 if the stage of the last probe succeeded.", labels=["stage"])
        for name, value in stages.items():
            stage.add_metric([name], value)
        took = GaugeMetricFamily("mail_probe_duration_seconds",
                                 "Submission to visibility of the last probe (time until giving up when it failed).", value=duration)
        last = GaugeMetricFamily("mail_probe_last_success_timestamp_seconds", "Unix time of the last successful probe (0: never).",
                                 value=self.last_success)
        runs = CounterMetricFamily("mail_probe_runs", "Probes run, by result.", labels=["result"])
        for result, n in self.runs.items():
            runs.add_metric([result], n)
        return [success, stage, took, last, runs]

    def close(self) -> None:
        self.jmap.close()


def _short(exc: Any) -> str:
    if isinstance(exc, smtplib.SMTPResponseException):
        return f"{exc.smtp_code} {exc.smtp_error.decode('utf-8', 'replace') if isinstance(exc.smtp_error, bytes) else exc.smtp_error}"
    return f"{type(exc).__name__}: {exc}"
