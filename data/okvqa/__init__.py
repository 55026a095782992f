"""OK-VQA from the official question/annotation files."""

from .okvqa import Builder

__all__ = ["Builder"]
