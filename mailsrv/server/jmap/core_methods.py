"""Core/echo (RFC 8620 §4)."""

from __future__ import annotations

from typing import Any

from .core import CORE, Call, method


@method("Core/echo", CORE)
def core_echo(call: Call) -> dict[str, Any]:
    return call.args
