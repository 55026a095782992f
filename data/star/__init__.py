"""STAR (situated reasoning) multiple-choice questions from the official json files and extracted frames."""

from .star import Builder

__all__ = ["Builder"]
