"""The optional end-to-end probe against a live mailsrv: submission with STARTTLS + AUTH, visibility over JMAP,
cleanup; and a probe that cannot log in."""

from __future__ import annotations

from pathlib import Path

from prometheus_client import generate_latest

from exporters.app import Exporter
from exporters.collectors.probe import HEADER
from mailsrv.config import parse_config
from tests.conftest import USER_PASSWORD, MailsrvProc
from tests.test_exporter_support import parse_samples, val


def probe_exporter(srv: MailsrvProc, password_file: Path) -> Exporter:
    return Exporter(parse_config({
        "server": {"url": srv.url, "ca_file": str(srv.cert)},
        "exporter": {"sources": [], "probe": {
            "enabled": True, "submission": f"127.0.0.1:{srv.submission_port}", "user": "alice",
            "password_file": str(password_file), "mail_from": "alice@example.org", "timeout": 20,
        }},
    }))


def probes_in_mailbox(srv: MailsrvProc) -> list[str]:
    session = srv.session("alice")
    aid = session["primaryAccounts"]["urn:ietf:params:jmap:mail"]
    resp = srv.jmap("alice", [["Email/query", {"accountId": aid, "filter": {"header": [HEADER]}}, "q"]])
    return list(resp[0][1]["ids"])


def test_probe_round_trip(mailsrv: MailsrvProc, tmp_path: Path) -> None:
    (tmp_path / "probe.pw").write_text(USER_PASSWORD + "\n")
    exp = probe_exporter(mailsrv, tmp_path / "probe.pw")
    for run in (1, 2):
        exp.poll_all_once()
        s = parse_samples(generate_latest(exp.registry).decode())
        assert val(s, "mail_probe_success") == 1
        assert all(val(s, "mail_probe_stage_success", stage=st) == 1 for st in ("submit", "deliver", "cleanup"))
        assert 0 < (val(s, "mail_probe_duration_seconds") or 0) < 20
        assert (val(s, "mail_probe_last_success_timestamp_seconds") or 0) > 0
        assert val(s, "mail_probe_runs_total", result="success") == run
        assert probes_in_mailbox(mailsrv) == []  # the probe deletes what it sent


def test_probe_that_cannot_log_in(mailsrv: MailsrvProc, tmp_path: Path) -> None:
    (tmp_path / "probe.pw").write_text("wrong\n")
    exp = probe_exporter(mailsrv, tmp_path / "probe.pw")
    exp.poll_all_once()
    s = parse_samples(generate_latest(exp.registry).decode())
    assert val(s, "mail_exporter_source_up", source="probe") == 1  # the probe ran; its result is the failure
    assert val(s, "mail_probe_success") == 0
    assert val(s, "mail_probe_stage_success", stage="submit") == 0
    assert val(s, "mail_probe_runs_total", result="failure") == 1
    health = exp.polled[0].health
    assert health.degraded and any("535" in p or "Authentication" in p for p in health.problems), health.problems
    assert "wrong" not in " ".join(health.problems)
