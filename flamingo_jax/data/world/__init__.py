"""A procedurally generated, seeded world for training and evaluating Flamingo on a CPU."""

from flamingo_jax.data.world.generate import EVAL_SUBSETS, SUBSET_KINDS, TRAIN_SUBSETS, World, WorldConfig
from flamingo_jax.data.world.generate import WorldSource, iter_world_text, world_config_from
from flamingo_jax.data.world.lexicon import Entity

__all__ = [
    "EVAL_SUBSETS", "SUBSET_KINDS", "TRAIN_SUBSETS", "World", "WorldConfig", "WorldSource", "Entity", "iter_world_text",
    "world_config_from"
]
