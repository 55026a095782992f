"""RareAct (unusual interactions) from the official rareact.csv and extracted frames."""

from .rareact import Builder

__all__ = ["Builder"]
