"""The generated Flamingo world as a TFDS builder (one config per subset)."""

from .flamingo_world import Builder, FlamingoWorldConfig, make_config

__all__ = ["Builder", "FlamingoWorldConfig", "make_config"]
