"""Record-keeping commands (ledger rebuild, transcripts, incidents): registered into ``gateway``'s parser."""

from __future__ import annotations

from typing import Any


def register(sub: Any, quota: Any) -> None:
    """Add this module's subcommands to the top-level subparsers."""
