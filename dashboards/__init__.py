"""Grafana dashboards and Prometheus alert rules for mail-exporter's metrics.

``python -m dashboards.generate`` writes the dashboards (Grafana 11.6 JSON, built with grafana-foundation-sdk)
and the alert rules; ``python -m dashboards.rules`` prints the rules with other thresholds. The generated files
live next to this module: ``provisioning/`` (copy into Grafana's provisioning directory) and ``prometheus/``.
"""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).resolve().parent
PROVISIONING_DIR = HERE / "provisioning"
DASHBOARD_DIR = PROVISIONING_DIR / "dashboards" / "mailsidecar"
RULES_FILE = HERE / "prometheus" / "mail-alerts.yml"
RULES_TEST_FILES = (HERE / "prometheus" / "mail-alerts.test.yml", HERE / "prometheus" / "mail-alerts.days.test.yml")
# Grafana's dashboard JSON Schema (see schema/README.md): the Grafana the dashboards are built for, and a current one
SCHEMA_FILES = {"11.6": HERE / "schema" / "dashboard-11.6.schema.json", "13.2": HERE / "schema" / "dashboard-13.2.schema.json"}

# short name -> file name of the generated dashboard
DASHBOARDS = {"overview": "mail-overview.json", "security": "mail-security.json", "backups": "mail-backups.json"}
