"""A CPU-sized Flamingo for tests and the embedded default. Arg knobs: vocab_size, xattn_kind, resampler."""

import ml_collections

from flamingo_jax import configs


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    a = configs.parse_arg(arg, vocab_size=512, xattn_kind="gated", resampler="perceiver")
    config = ml_collections.ConfigDict()
    config.model = configs.tiny_model_config(vocab_size=a.vocab_size)
    config.model.xattn.kind = a.xattn_kind
    config.model.resampler.kind = a.resampler
    config.seed = 0
    return configs.finalize(config)
