"""Placeholder until the scanner lands: checks nothing."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .proxy import Exchange


class LeakGuard:
    async def check(self, exchange: Exchange) -> None:
        return None

    async def close(self) -> None:
        return None
