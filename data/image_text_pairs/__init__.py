"""Image-text pairs from folders (img2dataset layout) or WebDataset tars."""

from .image_text_pairs import Builder

__all__ = ["Builder"]
