"""YouCook2 captions of recipe segments from the official annotation json and extracted frames."""

from .youcook2 import Builder

__all__ = ["Builder"]
