"""MSRVTT-QA from the official qa json files and extracted frames."""

from .msrvtt_qa import Builder

__all__ = ["Builder"]
