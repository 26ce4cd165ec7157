"""The alert rules: ``promtool check rules`` clean, ``promtool test rules`` passing, every alert with a firing and a
quiet test case, annotations complete, every ``runbook_url`` a heading of docs/operations.md whose entry names the
alert; thresholds that can be changed; the example Prometheus and Alertmanager configurations accepted by promtool
and amtool."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from dashboards import HERE, RULES_FILE, RULES_TEST_FILES
from dashboards.rules import Settings, render, rule_groups

ROOT = HERE.parent
RUNBOOK = ROOT / "docs" / "operations.md"


def slug(heading: str) -> str:
    """GitHub's anchor for a Markdown heading: link text only, lower case, punctuation dropped except ``-`` (and
    ``_``, which GitHub keeps), each space a ``-``."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip())
    return re.sub(r"[^\w\- ]", "", text.lower()).replace(" ", "-")


def runbook_sections(path: Path = RUNBOOK) -> dict[str, str]:
    """Anchor -> text under the heading (up to the next heading), as GitHub renders ``path``: headings inside fenced
    code blocks do not count, and a repeated slug gets ``-1``, ``-2`` … like on GitHub."""
    sections: dict[str, str] = {}
    seen: dict[str, int] = {}
    current: str | None = None
    fence = ""
    for line in path.read_text(encoding="utf-8").splitlines():
        if fence:
            if re.fullmatch(rf" {{0,3}}{re.escape(fence[0])}{{{len(fence)},}}\s*", line):
                fence = ""
            heading = None
        elif opening := re.match(r" {0,3}(`{3,}|~{3,})", line):
            fence, heading = opening.group(1), None
        else:
            heading = re.match(r" {0,3}#{1,6}\s+(.+?)(?:\s+#+)?\s*$", line)
        if heading:
            anchor = slug(heading.group(1))
            if anchor in seen:
                seen[anchor] += 1
                anchor = f"{anchor}-{seen[anchor]}"
            else:
                seen[anchor] = 0
            current = anchor
            sections[current] = ""
        elif current is not None:
            sections[current] += line + "\n"
    return sections


RUNBOOK_ANCHORS = set(runbook_sections())


def tool(name: str) -> str:
    path = shutil.which(name)
    assert path, f"{name} is not installed (Debian: apt-get install prometheus prometheus-alertmanager)"
    return path


def run(*argv: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=120, cwd=cwd)


def rules() -> list[dict[str, Any]]:
    return [r for g in yaml.safe_load(RULES_FILE.read_text())["groups"] for r in g["rules"]]


def test_promtool_check_rules_is_clean() -> None:
    done = run(tool("promtool"), "check", "rules", str(RULES_FILE))
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(rules())} rules found" in done.stdout


def test_promtool_unit_tests_pass() -> None:
    done = run(tool("promtool"), "test", "rules", *(f.name for f in RULES_TEST_FILES), cwd=RULES_FILE.parent)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("SUCCESS") == len(RULES_TEST_FILES)


def test_every_alert_has_a_firing_and_a_quiet_test_case() -> None:
    firing: set[str] = set()
    quiet: set[str] = set()
    for case in (c for f in RULES_TEST_FILES for c in yaml.safe_load(f.read_text())["tests"]):
        for check in case.get("alert_rule_test", []):
            (firing if check.get("exp_alerts") else quiet).add(check["alertname"])
    names = {r["alert"] for r in rules()}
    assert names - firing == set(), "alerts without a test that makes them fire"
    assert names - quiet == set(), "alerts without a test that keeps them quiet"
    assert (firing | quiet) - names == set(), "tests for alerts that do not exist"


def test_a_broken_rule_fails_the_unit_tests(tmp_path: Path) -> None:
    """The unit tests notice a changed threshold: they would not pass with a rule removed or loosened."""
    (tmp_path / "mail-alerts.yml").write_text(render(Settings(queue_backlog_messages=5000, auth_failures_per_minute=30)))
    suite = yaml.safe_load(RULES_TEST_FILES[0].read_text())
    suite["tests"] = [c for c in suite["tests"] if {t["alertname"] for t in c["alert_rule_test"]} &
                      {"MailQueueBacklog", "MailAuthFailureBurst"}]
    (tmp_path / "subset.test.yml").write_text(yaml.safe_dump(suite))
    done = run(tool("promtool"), "test", "rules", "subset.test.yml", cwd=tmp_path)
    assert done.returncode == 1
    report = done.stdout + done.stderr
    assert "alertname: MailQueueBacklog" in report and "alertname: MailAuthFailureBurst" in report, report


def test_every_rule_is_annotated_labelled_and_guarded() -> None:
    for rule in rules():
        name = rule["alert"]
        assert set(rule["annotations"]) == {"summary", "description", "runbook_url"}, name
        base, _, anchor = rule["annotations"]["runbook_url"].partition("#")
        assert base == "docs/operations.md", name
        assert anchor in RUNBOOK_ANCHORS, f"{name}: docs/operations.md has no heading for #{anchor}"
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, name
        expr = rule["expr"]
        # counters only inside rate()/increase(), so a restart of the server or the exporter never looks like a spike;
        # the one exception is a presence check ("6 hours of history")
        for m in re.finditer(r"mail_\w+_total", expr):
            before, after = expr[: m.start()].rstrip(), expr[m.end():].lstrip()
            assert before.endswith(("rate(", "increase(")) or (before.endswith("count by (instance, job) (") and
                                                               after.startswith("offset")), (name, expr)


def test_every_alert_is_explained_in_its_runbook_entry() -> None:
    """The entry a rule links to names the rule (so a moved or renamed alert leaves no stale entry behind), gives
    commands to run, and sits under "Alert runbook"."""
    sections = runbook_sections()
    entries = list(sections)
    start = entries.index("alert-runbook")
    for rule in rules():
        anchor = rule["annotations"]["runbook_url"].partition("#")[2]
        body = sections[anchor]
        assert f"**{rule['alert']}**" in body, f"#{anchor} does not name {rule['alert']}"
        assert "```sh" in body or "`mb " in body or "`curl " in body, f"#{anchor} has no command to run"
        assert entries.index(anchor) > start, f"#{anchor} is not under ## Alert runbook"


def test_runbook_anchors_follow_github_and_every_internal_link_resolves() -> None:
    assert slug("Secrets (LoadCredential)") == "secrets-loadcredential"
    assert slug("Queue: oldest message") == "queue-oldest-message"
    assert slug("1. The container died, the data is intact") == "1-the-container-died-the-data-is-intact"
    assert slug("`mail-backup` [restore](x.md) runbook") == "mail-backup-restore-runbook"
    text = RUNBOOK.read_text(encoding="utf-8")
    links = set(re.findall(r"\]\(#([^)]+)\)", text))
    assert len(links) > 10
    assert links - RUNBOOK_ANCHORS == set(), "links to headings that do not exist"


def test_a_missing_runbook_entry_is_noticed(tmp_path: Path) -> None:
    """Removing one entry's heading removes its anchor; a heading inside a code block is no anchor."""
    text = RUNBOOK.read_text(encoding="utf-8")
    assert "\n### Queue paused\n" in text
    (tmp_path / "ops.md").write_text(text.replace("\n### Queue paused\n", "\n```\n### Queue paused\n```\n"))
    assert "queue-paused" in RUNBOOK_ANCHORS and "queue-paused" not in runbook_sections(tmp_path / "ops.md")


def test_thresholds_can_be_changed_from_the_command_line(tmp_path: Path) -> None:
    out = tmp_path / "alerts.yml"
    done = run(sys.executable, "-m", "dashboards.rules", "--set", "queue_backlog_messages=1000", "--set", "queue_backlog_for=30m",
               "--runbook-base", "https://wiki.example.org/mail", "--out", str(out), cwd=ROOT)
    assert done.returncode == 0, done.stderr
    backlog = next(r for g in yaml.safe_load(out.read_text())["groups"] for r in g["rules"] if r["alert"] == "MailQueueBacklog")
    assert backlog["expr"].endswith("> 1000") and backlog["for"] == "30m"
    assert backlog["annotations"]["runbook_url"] == "https://wiki.example.org/mail#queue-backlog"
    assert run(tool("promtool"), "check", "rules", str(out)).returncode == 0
    for bad, message in ((["--set", "queue_backlog=5"], "unknown setting 'queue_backlog'"),
                         (["--set", "queue_backlog_messages=many"], "queue_backlog_messages: 'many' is not a valid int"),
                         (["--set", "oops"], "expected NAME=VALUE")):
        done = run(sys.executable, "-m", "dashboards.rules", *bad, cwd=ROOT)
        assert done.returncode == 1 and message in done.stderr and "Traceback" not in done.stderr, done.stderr
        assert len(done.stderr.strip().splitlines()) == 1


def test_out_replaces_the_rule_file_atomically_and_never_creates_directories(tmp_path: Path) -> None:
    """Prometheus may reload while ``--out`` writes: a reader of the old file keeps the whole old file, and a new
    one appears by rename (no temp file left behind). A mistyped directory is an error (exit 7), not created."""
    out = tmp_path / "mail-alerts.yml"
    out.write_text("groups: []\n")
    with out.open() as reader:
        done = run(sys.executable, "-m", "dashboards.rules", "--set", "queue_backlog_messages=1000", "--out", str(out), cwd=ROOT)
        assert done.returncode == 0, done.stderr
        assert reader.read() == "groups: []\n"  # the old inode, intact: the new file was renamed over it
    assert "> 1000" in out.read_text() and sorted(p.name for p in tmp_path.iterdir()) == ["mail-alerts.yml"]
    missing = tmp_path / "no-such-dir" / "mail-alerts.yml"
    done = run(sys.executable, "-m", "dashboards.rules", "--out", str(missing), cwd=ROOT)
    assert done.returncode == 7 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.strip() == f"dashboards.rules: cannot write {missing}: No such file or directory: {missing.parent}"
    assert not missing.parent.exists()


def test_overridden_rules_still_pass_promtool() -> None:
    groups = rule_groups(Settings(queue_backlog_messages=2, queue_backlog_for="5s", exporter_job="mail"))
    text = yaml.safe_dump(groups)
    assert 'up{job="mail"}' in text and "> 2" in text


def test_example_prometheus_config_is_valid() -> None:
    done = run(tool("promtool"), "check", "config", str(HERE / "prometheus" / "prometheus.example.yml"))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS: 1 rule files found" in done.stdout and f"SUCCESS: {len(rules())} rules found" in done.stdout


def test_example_alertmanager_config_is_valid_and_routes_by_severity() -> None:
    example = HERE / "alertmanager.example.yml"
    done = run(tool("amtool"), "check-config", str(example))
    assert done.returncode == 0, done.stdout + done.stderr
    for labels, receiver in ((["alertname=MailQueueBacklog", "severity=critical", "instance=mx1:9925"], "mail-pager"),
                             (["alertname=MailBackupFailed", "severity=warning"], "mail-team"),
                             (["alertname=MailClientsBanned", "severity=info"], "mail-digest")):
        routed = run(tool("amtool"), "config", "routes", "test", f"--config.file={example}", *labels)
        assert routed.returncode == 0 and routed.stdout.strip() == receiver, (labels, routed.stdout, routed.stderr)


@pytest.mark.parametrize("bad", ["groups: [{name: x, rules: [{alert: A, expr: 'sum(rate(x[5m])'}]}]"])
def test_promtool_rejects_a_broken_expression(tmp_path: Path, bad: str) -> None:
    """The check above is meaningful: promtool does fail on a broken expression."""
    (tmp_path / "bad.yml").write_text(bad)
    done = run(tool("promtool"), "check", "rules", str(tmp_path / "bad.yml"))
    assert done.returncode == 1
