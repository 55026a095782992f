"""Video-text pairs from extracted frame folders."""

from .video_text_frames import Builder

__all__ = ["Builder"]
