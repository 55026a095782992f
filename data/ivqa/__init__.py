"""iVQA (instructional video QA) from the official csv files and extracted frames."""

from .ivqa import Builder

__all__ = ["Builder"]
