"""Every PromQL expression of the dashboards and alert rules, run by a real Prometheus scraping a real
mail-exporter over a live mailsrv with traffic (tests/dashboards_stack.py): no query errors, the panels return
data, the rules evaluate cleanly and fire on the live series they are meant for (and only those); and
``mail-exporter dashboards render`` draws every dashboard from it."""

from __future__ import annotations

import math
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from dashboards import DASHBOARD_DIR, DASHBOARDS
from dashboards.query import TimeRange, substitute, variable_values
from tests.conftest import free_port
from tests.dashboards_stack import EXPORTER_JOB, Stack, live_stack, render_dashboards
from tests.test_exporter_support import wait_for

pytestmark = pytest.mark.slow
WINDOW = 150.0  # seconds of history the panel queries look at


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with live_stack(tmp_path_factory.mktemp("promql-live"), burst=lambda n: n in (1, 2)) as st:
        # enough history for rates and quantiles: traffic rounds, bans, completed deliveries and probes
        wait_for(lambda: st.traffic.rounds >= 12 and st.prometheus.query("sum(mail_security_bans_total) > 0")
                 and st.prometheus.query("sum(mail_delivery_duration_seconds_count) > 3")
                 and st.prometheus.query('mail_probe_runs_total{result="success"} >= 2')
                 and st.prometheus.query("count_over_time(up[1m]) >= 30"), timeout=150, interval=1)
        yield st
    assert st.traffic.errors == [], st.traffic.errors


def dashboard(name: str) -> dict[str, Any]:
    import json

    return dict(json.loads((DASHBOARD_DIR / DASHBOARDS[name]).read_text()))


def rules(stack: Stack) -> list[dict[str, Any]]:
    return [r for g in yaml.safe_load(stack.rules.read_text())["groups"] for r in g["rules"]]


def test_every_rule_expression_runs_and_evaluates_cleanly(stack: Stack) -> None:
    prom = stack.prometheus
    for rule in rules(stack):
        prom.query(rule["expr"])  # raises with Prometheus's error message on a bad query
    groups = wait_for(lambda: (lambda g: g if all(r["lastEvaluation"] > "2000" for x in g for r in x["rules"]) else None)(
        prom.api("rules")["groups"]), timeout=30)
    evaluated = {r["name"]: r for g in groups for r in g["rules"]}
    assert set(evaluated) == {r["alert"] for r in rules(stack)}
    assert {n: r["lastError"] for n, r in evaluated.items() if r["health"] != "ok" or r.get("lastError")} == {}


def test_rules_fire_on_the_live_series_they_are_meant_for(stack: Stack) -> None:
    prom = stack.prometheus

    def active() -> dict[tuple[str, str], str]:
        out = {}
        for a in prom.alerts():
            lab = a["labels"]
            what = lab.get("subject") or lab.get("endpoint") or lab.get("kind") or lab.get("instance", "")
            out[(lab["alertname"], what)] = a["state"]
        return out

    wanted = {
        ("MailBackupFailed", "carol"): "firing",            # export failed 6h ago (exported_job="export")
        ("MailBackupFailed", "offsite"): "firing",          # ship partial
        ("MailBackupRestoreDrillFailed", "offsite"): "firing",
        ("MailBackupVerificationOverdue", "offsite"): "firing",  # the offsite drill never succeeded
        ("MailBackupStale", "carol"): "pending",            # 30h, for: 10m
        ("MailClientsBanned", "authentication"): "firing",  # the burst of failed logins got 127.0.0.x banned
    }
    state = wait_for(lambda: (lambda a: a if all(a.get(k) == v for k, v in wanted.items()) else None)(active()), timeout=60)
    certificates = {k[1] for k, v in state.items() if k[0] == "MailCertificateExpiringSoon" and v == "pending"}
    assert len(certificates) == 3, state  # smtp, submission and https serve a certificate with 10 days left
    assert state.get(("MailDeliveryFailureRatio", f"127.0.0.1:{stack.exporter.port}")) == "pending", state
    quiet = {"MailExporterDown", "MailServerDown", "MailExporterSourceDown", "MailEndpointUnreachable", "MailQueueBacklog",
             "MailQueuePaused", "MailDeliveryProbeFailing", "MailDeliveryProbeSlow", "MailCertificateUntrusted",
             "MailCertificateExpiringVerySoon", "MailBackupNeverRecorded", "MailBackupRepositoryCheckFailed",
             "MailBackupStateUnreadable"}
    assert {k for k in state if k[0] in quiet} == set(), state
    # the stale and failed alerts name the backup job and subject as Prometheus stores them
    stale = next(a for a in prom.alerts() if a["labels"]["alertname"] == "MailBackupStale")
    assert stale["labels"]["exported_job"] == "export" and stale["labels"]["job"] == EXPORTER_JOB
    assert stale["annotations"]["summary"].startswith("No successful export of carol for 1d 6h")


@pytest.mark.parametrize("name", list(DASHBOARDS))
def test_every_panel_query_runs_and_returns_data(stack: Stack, name: str) -> None:
    prom, board = stack.prometheus, dashboard(name)
    end = time.time()
    tr = TimeRange(end - WINDOW, end, step=2.0, scrape_interval=1.0)
    values = variable_values(board, {"job": EXPORTER_JOB})
    empty = []
    for panel in (p for p in board["panels"] if p["type"] != "row"):
        for target in panel["targets"]:
            expr = substitute(target["expr"], values, tr)
            assert "$" not in expr, expr
            if panel["type"] == "timeseries":
                result = prom.api("query_range", query=expr, start=tr.start, end=tr.end, step=tr.step)["result"]
                ok = any(math.isfinite(float(v)) for s in result for _, v in s["values"])
            else:
                result = prom.query(expr, at=end)
                ok = any(math.isfinite(float(s["value"][1])) for s in result)
            if not ok:
                empty.append(f"{panel['title']}: {expr}")
    assert empty == [], "panels without data"


def test_template_variable_queries_find_the_exporter(stack: Stack) -> None:
    prom = stack.prometheus
    assert prom.api("label/job/values", **{"match[]": "mail_exporter_build_info"}) == [EXPORTER_JOB]
    instances = prom.api("label/instance/values", **{"match[]": f'mail_exporter_build_info{{job=~"{EXPORTER_JOB}"}}'})
    assert instances == [f"127.0.0.1:{stack.exporter.port}"]


def test_a_variable_narrows_the_panels(stack: Stack) -> None:
    board, prom = dashboard("overview"), stack.prometheus
    expr = next(p for p in board["panels"] if p.get("title") == "Waiting in queue")["targets"][0]["expr"]
    tr = TimeRange(time.time() - 60, time.time(), 2.0, 1.0)
    assert prom.query(substitute(expr, variable_values(board, {"instance": f"127.0.0.1:{stack.exporter.port}"}), tr))
    assert prom.query(substitute(expr, variable_values(board, {"instance": "elsewhere:9925"}), tr)) == []


def test_render_draws_every_dashboard(stack: Stack, tmp_path: Path) -> None:
    import matplotlib.image

    for done, name in zip(render_dashboards(stack.prometheus.url, tmp_path, "2m"), DASHBOARDS, strict=True):
        assert done.returncode == 0, done.stderr
        panels = sum(1 for p in dashboard(name)["panels"] if p["type"] != "row")
        png = tmp_path / f"dashboard-{name}.png"
        assert done.stdout.strip() == f"wrote {png}: {panels} panels, {panels} with data, 0 with query errors"
        assert done.stderr == ""
        image = matplotlib.image.imread(tmp_path / f"dashboard-{name}.png")
        height, width = image.shape[:2]
        assert width == 2040 and height > 1200, image.shape
        assert image[..., :3].std() > 0.05  # not a blank canvas


def render(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "exporters", "dashboards", "render", *args], capture_output=True, text=True, timeout=120)


def test_render_user_mistakes_are_one_line_and_an_exit_code(stack: Stack, tmp_path: Path) -> None:
    url, png = stack.prometheus.url, str(tmp_path / "x.png")
    closed = f"http://127.0.0.1:{free_port()}"
    cases = [
        (["--prometheus", url, "--dashboard", "mail-weather", "--out", png], 1, "unknown dashboard 'mail-weather'"),
        (["--prometheus", url, "--dashboard", "overview", "--out", png, "--range", "an hour"], 1, "not a duration"),
        (["--prometheus", url, "--dashboard", "overview", "--out", png, "--var", "host=mx"], 1, "has no variable host"),
        (["--prometheus", url, "--dashboard", "overview", "--out", png, "--end", "yesterday"], 1, "--end: not a Unix time"),
        (["--prometheus", closed, "--dashboard", "overview", "--out", png], 2, "cannot reach Prometheus"),
        (["--prometheus", stack.exporter.url, "--dashboard", "overview", "--out", png], 2, "did not answer like Prometheus"),
        (["--prometheus", url, "--dashboard", "security", "--out", "/dev/null/x.png", "--range", "1m"], 7, "cannot write /dev/null/x.png"),
        (["--prometheus", url, "--out", png], 1, "Missing option '--dashboard'"),
    ]
    for args, code, message in cases:
        done = render(*args)
        assert done.returncode == code, (args, done.stdout, done.stderr)
        assert message in done.stderr and "Traceback" not in done.stderr, (args, done.stderr)
        if code != 1 or "Missing option" not in message:
            assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert not Path(png).exists()


def test_render_reports_a_panel_whose_query_fails(stack: Stack, tmp_path: Path) -> None:
    import json

    board = dashboard("overview")
    panel = next(p for p in board["panels"] if p.get("title") == "Queue by status")
    panel["targets"][0]["expr"] = "sum by (status) (rate(mail_queue_messages[$__rate_interval]"  # unclosed
    (tmp_path / "broken.json").write_text(json.dumps(board))
    done = render("--prometheus", stack.prometheus.url, "--dashboard", str(tmp_path / "broken.json"), "--out", str(tmp_path / "b.png"),
                  "--range", "1m", "--scrape-interval", "1s")
    assert done.returncode == 0
    assert "panel 'Queue by status': A: " in done.stderr and "1 with query errors" in done.stdout
    assert (tmp_path / "b.png").stat().st_size > 10_000
