"""Write the Grafana dashboards and the Prometheus alert rules from their Python definitions.

``python -m dashboards.generate``            rewrite the committed files
``python -m dashboards.generate --check``    exit 1 and name the files that differ from what the code generates

Dashboards are built with grafana-foundation-sdk (its Grafana 11.6 build), given stable panel ids, and validated
against Grafana's dashboard JSON Schemas (``schema/``: Grafana 11.6 and a current Grafana) before anything is written.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mailsrv.fsio import atomic_write_bytes

from . import DASHBOARD_DIR, DASHBOARDS, RULES_FILE
from . import rules as rules_mod
from .validate import schema_errors


def _builders() -> dict[str, Callable[[], Any]]:
    from . import backups, overview, security

    return {"overview": overview.build, "security": security.build, "backups": backups.build}


def dashboard_json(name: str) -> dict[str, Any]:
    """The dashboard ``name`` (overview, security, backups) as Grafana JSON."""
    from grafana_foundation_sdk.cog.encoder import JSONEncoder

    model = _builders()[name]().build()
    data: dict[str, Any] = json.loads(JSONEncoder(sort_keys=True).encode(model))
    for i, panel in enumerate(data.get("panels", []), start=1):
        panel["id"] = i  # the SDK leaves every id at 0; Grafana wants them unique
    for variable in data.get("templating", {}).get("list", []):
        if variable.get("type") != "interval":  # interval-variable settings the SDK adds to every variable
            for key in ("auto", "auto_count", "auto_min"):
                variable.pop(key, None)
    return data


def render_dashboard(name: str) -> str:
    return json.dumps(dashboard_json(name), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def outputs() -> dict[Path, str]:
    """Every generated file and its content."""
    files = {DASHBOARD_DIR / DASHBOARDS[name]: render_dashboard(name) for name in DASHBOARDS}
    files[RULES_FILE] = rules_mod.render()
    return files


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m dashboards.generate", description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true", help="compare with the committed files instead of writing them")
    args = p.parse_args(argv)
    files = outputs()
    problems = [f"{path.name}: {err}" for path, text in files.items() if path.suffix == ".json"
                for err in schema_errors(json.loads(text))]
    if problems:
        print("dashboards.generate: generated dashboards do not match Grafana's schema:", *problems, sep="\n  ", file=sys.stderr)
        return 1
    stale = [path for path, text in files.items() if not path.exists() or path.read_text(encoding="utf-8") != text]
    if args.check:
        for path in stale:
            print(f"out of date: {path}", file=sys.stderr)
        return 1 if stale else 0
    for path in stale:
        atomic_write_bytes(path, files[path].encode("utf-8"))
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
