"""Hateful Memes from the official jsonl files."""

from .hateful_memes import Builder

__all__ = ["Builder"]
