"""Interleaved documents in a simple generic jsonl layout."""

from .interleaved_generic import Builder

__all__ = ["Builder"]
