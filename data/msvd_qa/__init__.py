"""MSVD-QA from the official qa json files and extracted frames."""

from .msvd_qa import Builder

__all__ = ["Builder"]
