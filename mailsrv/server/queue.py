"""Outbound queue (placeholder until the queue module owner fills it)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .app import MailServer


class OutboundQueue:
    def __init__(self, server: MailServer) -> None:
        self.server = server

    def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass
