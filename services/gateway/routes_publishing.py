"""HTTP routes of the gateway for publishing."""

from __future__ import annotations

from aiohttp import web


def add_routes(app: web.Application) -> None:
    """Register this area's routes on the gateway application."""
