"""OBELICS-style interleaved documents: parquet rows with image URLs resolved to local files."""

from .obelics import Builder

__all__ = ["Builder"]
