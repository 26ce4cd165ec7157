"""The Grafana dashboards: generated from Python (committed JSON == generator output), valid against Grafana's
dashboard schema, wired to the datasource/job/instance variables, using only metrics mail-exporter documents,
with provisioning files that point at them; plus the renderer's value display."""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from dashboards import DASHBOARD_DIR, DASHBOARDS, PROVISIONING_DIR, RULES_FILE
from dashboards.generate import dashboard_json, outputs, render_dashboard
from dashboards.query import TimeRange, legend, substitute, variable_values
from dashboards.rules import rule_groups
from dashboards.units import display, format_value
from dashboards.validate import schema_errors

ROOT = Path(__file__).resolve().parent.parent
METRIC = re.compile(r"\b(mail_[a-z0-9_]+|up)\b(?=\s*[{\[(]|\s*$|\s*[=!<>)*/+-]|\s+(?:and|or|unless|offset)\b)")


def committed(name: str) -> dict[str, Any]:
    return dict(json.loads((DASHBOARD_DIR / DASHBOARDS[name]).read_text()))


def panels(board: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in board["panels"] if p["type"] != "row"]


def exprs(board: dict[str, Any]) -> list[str]:
    return [t["expr"] for p in panels(board) for t in p["targets"]]


def documented_metrics() -> set[str]:
    """Every metric name docs/metrics.md lists (tables and prose), histograms with their series suffixes."""
    text = (ROOT / "docs" / "metrics.md").read_text()
    names = set(re.findall(r"`(mail_[a-z0-9_]+)`", text))
    names |= {"mail_users", "mail_domains"}
    for n in list(names):
        if n.endswith("_seconds") or n.endswith("_bytes"):
            names |= {f"{n}_bucket", f"{n}_count", f"{n}_sum"}
    return names


@pytest.mark.parametrize("name", list(DASHBOARDS))
def test_committed_dashboard_is_the_generators_output(name: str) -> None:
    assert (DASHBOARD_DIR / DASHBOARDS[name]).read_text() == render_dashboard(name), \
        "run `python -m dashboards.generate` and commit the result"


def test_committed_rules_are_the_generators_output_and_generate_check_agrees() -> None:
    assert RULES_FILE.read_text() == outputs()[RULES_FILE]
    done = subprocess.run([sys.executable, "-m", "dashboards.generate", "--check"], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("name", list(DASHBOARDS))
def test_dashboard_is_valid_against_grafanas_schema(name: str) -> None:
    board = committed(name)
    assert schema_errors(board) == []
    assert board["schemaVersion"] >= 41  # Grafana 11.6 (grafana-foundation-sdk's 11.6 build)


def test_the_schema_catches_broken_dashboards() -> None:
    board = committed("overview")
    broken = copy.deepcopy(board)
    broken["panels"][1]["gridPos"] = "oops"
    broken["panels"][2]["fieldConfig"]["defaults"]["unit"] = 3
    broken["panels"][3]["gridpos"] = {"x": 1}
    broken["refresh"] = 60
    del broken["schemaVersion"]
    errors = schema_errors(broken)
    assert any(e.startswith("panels/1/gridPos:") for e in errors), errors
    assert any(e.startswith("panels/2/fieldConfig/defaults/unit:") for e in errors), errors
    assert any("'gridpos' was unexpected" in e for e in errors), errors
    assert any(e.startswith("refresh:") for e in errors), errors
    assert any("'schemaVersion' is a required property" in e for e in errors), errors


def test_keys_newer_than_grafana_11_6_are_refused() -> None:
    """The dashboards target Grafana 11.6: a key only later Grafana versions know fails its schema, by name."""
    board = committed("overview")
    board["templating"]["list"][1]["staticOptions"] = []  # a query-variable option Grafana 12 added
    board["panels"][1]["timeCompare"] = "1d"
    errors = schema_errors(board)
    assert any("'staticOptions' was unexpected" in e and e.endswith("(Grafana 11.6 schema)") for e in errors), errors
    assert any("'timeCompare' was unexpected" in e and e.endswith("(Grafana 11.6 schema)") for e in errors), errors
    assert schema_errors(committed("overview")) == []


@pytest.mark.parametrize("name", list(DASHBOARDS))
def test_variables_datasource_units_and_thresholds(name: str) -> None:
    board = committed(name)
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    for var in ("job", "instance"):
        assert variables[var]["type"] == "query" and variables[var]["includeAll"] and variables[var]["allValue"] == ".*"
        assert variables[var]["datasource"]["uid"] == "${datasource}"
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids)) and 0 not in ids
    for p in panels(board):
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
        defaults = p["fieldConfig"]["defaults"]
        assert defaults.get("unit"), p["title"]
        assert defaults["thresholds"]["steps"][0]["value"] is None, p["title"]
        assert p.get("description"), p["title"]
        assert p["targets"], p["title"]
        for t in p["targets"]:
            assert 'job=~"$job"' in t["expr"] and 'instance=~"$instance"' in t["expr"], (p["title"], t["expr"])
    grid = [(p["gridPos"]["x"], p["gridPos"]["y"]) for p in board["panels"]]
    assert len(grid) == len(set(grid)), "two panels at the same place"
    assert all(p["gridPos"]["x"] + p["gridPos"]["w"] <= 24 for p in board["panels"])


def test_every_metric_in_dashboards_and_rules_is_one_mail_exporter_documents() -> None:
    known = documented_metrics() | {"up"}
    used: dict[str, set[str]] = {}
    for name in DASHBOARDS:
        for expr in exprs(committed(name)):
            for metric in METRIC.findall(expr):
                used.setdefault(metric, set()).add(name)
    for group in rule_groups()["groups"]:
        for rule in group["rules"]:
            for metric in METRIC.findall(rule["expr"]):
                used.setdefault(metric, set()).add(rule["alert"])
    assert len(used) > 30
    assert {m: sorted(w) for m, w in used.items() if m not in known} == {}


def test_every_alert_the_docs_name_is_a_shipped_rule() -> None:
    """The docs describe the rules that ship, not examples that drift from them (names, and no stray thresholds)."""
    shipped = {r["alert"] for g in rule_groups()["groups"] for r in g["rules"]}
    for doc in ("docs/metrics.md", "docs/dashboards.md", "docs/operations.md", "README.md"):
        named = set(re.findall(r"\bMail[A-Z][A-Za-z]+\b", (ROOT / doc).read_text(encoding="utf-8")))
        assert named - shipped == set(), f"{doc} names alerts that do not exist"
    assert "alert: " not in (ROOT / "docs" / "metrics.md").read_text(encoding="utf-8"), "rule YAML copied into metrics.md"


def test_panels_cover_the_issue() -> None:
    titles = {name: {p["title"] for p in panels(committed(name))} for name in DASHBOARDS}
    text = {name: " ".join(exprs(committed(name))) for name in DASHBOARDS}
    for metric in ("mail_messages_received_total", "mail_queue_messages", "mail_smtp_rejections_total", "mail_auth_attempts_total",
                   "mail_connections_total", "mail_delivery_duration_seconds_bucket"):
        assert metric in text["overview"], metric
    for metric in ("mail_auth_attempts_total", "mail_security_bans_total", "mail_tls_certificate_expiry_timestamp_seconds"):
        assert metric in text["security"], metric
    for metric in ("mail_backup_last_success_timestamp_seconds", "mail_backup_last_duration_seconds", "mail_backup_last_bytes",
                   "mail_backup_snapshots", "mail_backup_last_status"):
        assert metric in text["backups"], metric
    assert 'exported_job=~"drill"' in text["backups"] and 'exported_job=~"check"' in text["backups"]
    assert "Since the last successful export, per account" in titles["backups"]
    assert "Since the last successful upload, per target" in titles["backups"]


def test_provisioning_folder_points_at_the_dashboards() -> None:
    providers = yaml.safe_load((PROVISIONING_DIR / "dashboards" / "mailsidecar.yml").read_text())["providers"]
    assert len(providers) == 1 and providers[0]["type"] == "file"
    path = Path(providers[0]["options"]["path"])
    # copying provisioning/ into /etc/grafana/provisioning/ puts the JSON files at the provider's path
    assert path.parts[-2:] == ("dashboards", "mailsidecar") and path.parent.parent == Path("/etc/grafana/provisioning")
    assert sorted(p.name for p in (PROVISIONING_DIR / path.relative_to("/etc/grafana/provisioning")).glob("*.json")) == \
        sorted(DASHBOARDS.values())
    sources = yaml.safe_load((PROVISIONING_DIR / "datasources" / "mailsidecar.yml").read_text())["datasources"]
    assert [s["type"] for s in sources] == ["prometheus"] and sources[0]["isDefault"] is False
    for name in DASHBOARDS:
        current = committed(name)["templating"]["list"][0]["current"]
        assert (current["value"], current["text"]) == (sources[0]["uid"], sources[0]["name"])


def test_generate_refuses_a_dashboard_that_fails_the_schema(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import dashboards.generate as gen

    real = gen.dashboard_json

    def broken(name: str) -> dict[str, Any]:
        board = real(name)
        board["panels"][1]["gridPos"]["w"] = "wide"
        return board

    monkeypatch.setattr(gen, "dashboard_json", broken)
    assert gen.main(["--check"]) == 1
    assert "gridPos/w" in capsys.readouterr().err


# -- the renderer's pieces that need no Prometheus --------------------------------------------------------------
def test_template_variables_and_legends_follow_grafana() -> None:
    board = committed("overview")
    values = variable_values(board, {"instance": "mx1:9925"})
    assert values == {"job": ".*", "instance": "mx1:9925"}
    tr = TimeRange(start=0, end=3600, step=15, scrape_interval=15)
    expr = substitute('sum(rate(x{job=~"$job",instance=~"${instance}"}[$__rate_interval])) + increase(y[$__range])', values, tr)
    assert expr == 'sum(rate(x{job=~".*",instance=~"mx1:9925"}[60s])) + increase(y[3600s])'
    assert substitute("rate(x[$__rate_interval])", values, TimeRange(0, 86400, 360, 15)) == "rate(x[375s])"
    assert legend("{{kind}} via {{ protocol }}", {"kind": "inbound", "protocol": "smtp"}, "x") == "inbound via smtp"
    assert legend("__auto", {"__name__": "up", "job": "j"}, "x") == 'up{job="j"}'
    assert legend("__auto", {}, "Queue") == "Queue"


def test_values_are_shown_like_grafana() -> None:
    assert format_value(1234, "short") == "1.23 K"
    assert format_value(0.3333, "percentunit") == "33.3%"
    assert format_value(5_000_000, "bytes") == "4.77 MiB"
    assert format_value(5400, "s") == "1.5 hour" and format_value(0.0042, "s") == "4.2 ms"
    assert format_value(97200, "dtdurations") == "1 day, 3 hours"
    assert format_value(None, "short") == "No data"
    board = committed("backups")
    stale = next(p for p in panels(board) if p["title"] == "Oldest account backup")["fieldConfig"]["defaults"]
    assert display(30 * 3600, stale) == ("1 day, 6 hours", "#F2495C")         # red: over the 26h limit
    assert display(3 * 3600, stale) == ("3 hours", "#73BF69")
    assert display(1.8e9, stale) == ("never", "#F2495C")                       # 0 = never succeeded
    result = next(p for p in panels(board) if p["title"] == "Restore drill")["fieldConfig"]["defaults"]
    assert display(0, result) == ("FAILED", "#F2495C") and display(2, result) == ("OK", "#73BF69")
    assert display(1, result) == ("PARTIAL", "#FF9830")


def test_generated_files_and_pictures_are_replaced_atomically(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``generate`` and the renderer write a temp file and rename it: a reader of the old file (Grafana rereading
    its provisioning folder, a web server serving the PNG) never sees a half-written one."""
    import dashboards.generate as gen
    from dashboards.draw import render_png
    from dashboards.query import PanelData

    target = tmp_path / "mail-overview.json"
    target.write_text("old\n")
    monkeypatch.setattr(gen, "outputs", lambda: {target: render_dashboard("overview")})
    with target.open() as reader:
        assert gen.main([]) == 0
        assert reader.read() == "old\n"
    assert target.read_text() == render_dashboard("overview")

    png = tmp_path / "overview.png"
    png.write_bytes(b"old")
    board = committed("overview")
    with png.open("rb") as reader:
        render_png(board, [PanelData(p) for p in board["panels"]], TimeRange(0, 3600, 15, 15), png, "no data")
        assert reader.read() == b"old"
    assert png.read_bytes().startswith(b"\x89PNG") and sorted(p.name for p in tmp_path.iterdir()) == [target.name, png.name]


def test_dashboard_json_is_deterministic() -> None:
    assert dashboard_json("security") == dashboard_json("security")
