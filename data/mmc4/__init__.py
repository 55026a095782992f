"""MMC4 interleaved documents (jsonl shards + downloaded images)."""

from .mmc4 import Builder

__all__ = ["Builder"]
