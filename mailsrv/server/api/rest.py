"""Stalwart 0.15 management REST API under /api (placeholder until its module owner fills it)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from aiohttp import web

    from ..app import MailServer


def setup(app: web.Application, server: MailServer) -> None:
    """Register the /api routes."""
