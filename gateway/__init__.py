"""Class token gateway: one Anthropic key shared fairly and safely by a class of Claude Code users."""

__version__ = "0.1.0"
