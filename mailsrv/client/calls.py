"""JMAP method calls and responses as plain typed values, shared by the client and its helpers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .errors import ProtocolError

READ_ONLY_SUFFIXES = ("/get", "/query", "/changes", "/queryChanges", "Core/echo", "/validate", "/parse")


@dataclass
class Invocation:
    """One method call or response: ``[name, arguments, callId]``."""

    name: str
    args: dict[str, Any]
    id: str

    def to_json(self) -> list[Any]:
        return [self.name, self.args, self.id]


def ref(call_id: str, name: str, path: str) -> dict[str, str]:
    """A ResultReference (RFC 8620 §3.7): use as ``{"#ids": ref("q", "Email/query", "/ids")}``."""
    return {"resultOf": call_id, "name": name, "path": path}


@dataclass
class Response:
    """The method responses of one request."""

    invocations: list[Invocation]
    session_state: str = ""
    created_ids: dict[str, str] | None = None

    def all(self, call_id: str) -> list[Invocation]:
        return [i for i in self.invocations if i.id == call_id]

    def get(self, call_id: str) -> Invocation:
        """The first response to ``call_id`` (a /set with implicit calls answers more than once)."""
        for inv in self.invocations:
            if inv.id == call_id:
                return inv
        raise ProtocolError(f"no response for method call {call_id!r}")

    def args(self, call_id: str) -> dict[str, Any]:
        return self.get(call_id).args


