"""VisDial v1.0 from the official dialog json files and dense relevance annotations."""

from .visdial import Builder

__all__ = ["Builder"]
