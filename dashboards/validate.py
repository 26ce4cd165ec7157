"""Validate dashboard JSON against Grafana's dashboard schema (``schema/dashboard.schema.json``, see its README)."""

from __future__ import annotations

import json
from functools import cache
from typing import Any

from . import SCHEMA_FILE


@cache
def _validator() -> Any:
    import jsonschema

    return jsonschema.Draft7Validator(json.loads(SCHEMA_FILE.read_text(encoding="utf-8")))


def schema_errors(dashboard: dict[str, Any]) -> list[str]:
    """Every schema violation as ``path: message`` (empty when valid).

    A panel matches one of two schemas (panel or row); for those the closest branch's error is reported.
    """
    out = []
    for error in sorted(_validator().iter_errors(dashboard), key=lambda e: list(map(str, e.absolute_path))):
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
