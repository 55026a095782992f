"""TextVQA from the official json files."""

from .textvqa import Builder

__all__ = ["Builder"]
