"""Flickr30k captions, Karpathy split."""

from .flickr30k import Builder

__all__ = ["Builder"]
