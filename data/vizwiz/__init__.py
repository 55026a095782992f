"""VizWiz VQA from the official annotation files."""

from .vizwiz import Builder

__all__ = ["Builder"]
