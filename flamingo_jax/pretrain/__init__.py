"""The two pretraining stages of the reproduce pipeline, at world scale, before Flamingo training.

    from flamingo_jax import pretrain
    vision_dir = pretrain.pretrain_vision(config, "DIR/vision")   # CLIP-style contrastive, 'clip' dataset
    lm_dir = pretrain.pretrain_lm(config, "DIR/lm")               # next-token, 'text' dataset
    config.pretrained.vision, config.pretrained.lm = vision_dir, lm_dir   # the trainer loads them, frozen

`config` is an experiment config (its model.vision / model.lm and data are used, with the stage defaults of
common.pretrain_config) or a stage config from `pretrain_config(kind, model, data, steps=..., ...)`. Results are
saved in flamingo_jax.convert's format (load_converted reads them). Both stages are resumable (train state saved
every save_every steps) and idempotent (a finished directory is returned as is).
"""

from __future__ import annotations

import ml_collections

from flamingo_jax.pretrain.common import default_path, from_experiment, is_done, pretrain_config
from flamingo_jax.pretrain.contrastive import contrastive_loss, pretrain_vision
from flamingo_jax.pretrain.lm import next_token_loss, pretrain_lm


def pretrain_for(kind: str, config: ml_collections.ConfigDict, workdir: str, **overrides) -> str:
    """Pretrains config.model.<kind> ('vision' or 'lm') of an experiment config into workdir."""
    stage = from_experiment(config, kind, **overrides)
    return (pretrain_vision if kind == "vision" else pretrain_lm)(stage, workdir)


__all__ = [
    "contrastive_loss", "default_path", "from_experiment", "is_done", "next_token_loss", "pretrain_config",
    "pretrain_for", "pretrain_lm", "pretrain_vision"
]
