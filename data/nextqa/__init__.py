"""NExT-QA open-ended (NExT-OE) from the official csv files and extracted frames."""

from .nextqa import Builder

__all__ = ["Builder"]
