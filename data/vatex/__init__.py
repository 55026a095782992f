"""VATEX English captions from the official json files and extracted frames."""

from .vatex import Builder

__all__ = ["Builder"]
