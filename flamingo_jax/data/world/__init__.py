"""A procedurally generated, seeded world for training and evaluating Flamingo on a CPU."""

from flamingo_jax.data.world.generate import World
from flamingo_jax.data.world.lexicon import Entity
from flamingo_jax.data.world.source import WorldSource, iter_world_text
from flamingo_jax.data.world.world_config import EVAL_SUBSETS, SUBSET_KINDS, TRAIN_SUBSETS, WorldConfig
from flamingo_jax.data.world.world_config import world_config_from

__all__ = [
    "EVAL_SUBSETS", "SUBSET_KINDS", "TRAIN_SUBSETS", "World", "WorldConfig", "WorldSource", "Entity", "iter_world_text",
    "world_config_from"
]
