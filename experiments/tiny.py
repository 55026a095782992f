"""A CPU-sized Flamingo on the generated world: tests and the embedded default.

Arg knobs: vocab_size, xattn_kind (gated | vanilla | grafting), resampler (perceiver | transformer | mlp).
"""

import ml_collections

from flamingo_jax import configs
from flamingo_jax.data.config import tiny_data_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    a = configs.parse_arg(arg, vocab_size=512, xattn_kind="gated", resampler="perceiver")
    config = ml_collections.ConfigDict()
    config.model = configs.tiny_model_config(vocab_size=a.vocab_size)
    config.model.xattn.kind = a.xattn_kind
    config.model.resampler.kind = a.resampler
    config.seed = 0
    data = tiny_data_config()  # its image_size follows config.model.vision's (configs.link_image_size)
    configs.add_training(config, data, total_steps=20, log_every=5, warmup_steps=10)
    config.optimizer.lr = 1e-3
    return configs.finalize(config)
