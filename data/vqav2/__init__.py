"""VQAv2 from the official question/annotation files."""

from .vqav2 import Builder

__all__ = ["Builder"]
