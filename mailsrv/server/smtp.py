"""SMTP listeners (placeholder until the SMTP module owner fills it)."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .app import MailServer


async def start_smtp(server: MailServer) -> list[asyncio.base_events.Server]:
    return []
