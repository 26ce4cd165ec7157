"""Validate dashboard JSON against Grafana's dashboard schemas (``schema/*.schema.json``, see its README).

A dashboard must pass both: the schema of Grafana 11.6, which the dashboards are built for (so no key a newer
Grafana added slips in), and that of a current Grafana (so nothing it dropped or renamed is relied on).
"""

from __future__ import annotations

import json
from functools import cache
from typing import Any

from . import SCHEMA_FILES


@cache
def _validator(version: str) -> Any:
    import jsonschema

    return jsonschema.Draft7Validator(json.loads(SCHEMA_FILES[version].read_text(encoding="utf-8")))


def schema_errors(dashboard: dict[str, Any]) -> list[str]:
    """Every schema violation as ``path: message`` (empty when valid); one only some schemas report names them.

    A panel matches one of two schemas (panel or row); for those the closest branch's error is reported.
    """
    found: dict[str, list[str]] = {}
    for version in SCHEMA_FILES:
        for error in _errors(_validator(version), dashboard):
            found.setdefault(error, []).append(version)
    return [e if len(versions) == len(SCHEMA_FILES) else f"{e} (Grafana {', '.join(versions)} schema)"
            for e, versions in found.items()]


def _errors(validator: Any, dashboard: dict[str, Any]) -> list[str]:
    out = []
    for error in sorted(validator.iter_errors(dashboard), key=lambda e: list(map(str, e.absolute_path))):
        for e in _closest_branch(error):
            path = "/".join(map(str, e.absolute_path)) or "(root)"
            out.append(f"{path}: {e.message if len(e.message) <= 160 else e.message[:157] + '...'}")
    return out


def _closest_branch(error: Any) -> list[Any]:
    """For an anyOf error, the errors of the branch that failed least (recursively); else the error itself."""
    if not error.context:
        return [error]
    branches: dict[Any, list[Any]] = {}
    for e in error.context:
        branches.setdefault(e.schema_path[0], []).append(e)
    closest = min(branches.values(), key=len)
    return [leaf for e in closest for leaf in _closest_branch(e)]
