"""Parameter counts of a config, from shapes only (jax.eval_shape: nothing is allocated).

  python -m flamingo_jax.tools.params --config experiments/flamingo_3b.py
prints {"total", "lm", "vision", "resampler", "xattn", "new_tokens"} as integers.
"""

from __future__ import annotations

import functools
import json
import math

import jax
import jax.numpy as jnp
import ml_collections
from absl import app
from ml_collections import config_flags

from flamingo_jax import models
from flamingo_jax.models.vision import vision_num_tokens


def abstract_params(model_config: ml_collections.ConfigDict) -> dict:
    """The (unboxed) param tree of config.model as ShapeDtypeStructs."""
    model = models.build(model_config)
    v = model_config.vision
    image = jnp.zeros((1, 1, 1, v.image_size, v.image_size, 3), jnp.float32)
    tokens = jnp.zeros((1, 2), jnp.int32)
    mask = jnp.ones((1, 1), bool)
    abstract = jax.eval_shape(lambda: model.init(jax.random.key(0), tokens, image, mask))
    return jax.tree.map(lambda x: x, abstract["params"], is_leaf=lambda x: hasattr(x, "unbox"))


def count_params(model_config: ml_collections.ConfigDict) -> dict[str, int]:
    """Integer counts per top-level subtree and in total."""
    from flax import linen as nn

    params = nn.meta.unbox(abstract_params(model_config))
    counts = {name: sum(math.prod(x.shape) for x in jax.tree.leaves(sub)) for name, sub in params.items()}
    counts["total"] = sum(counts.values())
    return counts


def main(argv, config_flag) -> None:
    del argv
    config = config_flag.value
    out = count_params(config.model)
    out["visual_tokens_per_frame"] = vision_num_tokens(config.model.vision)
    print(json.dumps(out))


if __name__ == "__main__":
    # Flags are defined only when run as a program, so importing count_params defines none.
    flag = config_flags.DEFINE_config_file("config", None, "experiment config file", lock_config=True)
    app.run(functools.partial(main, config_flag=flag))
