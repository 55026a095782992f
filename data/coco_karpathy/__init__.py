"""COCO captions, Karpathy split."""

from .coco_karpathy import Builder

__all__ = ["Builder"]
