"""Checks a converted param tree against the shapes our model would create for its config."""

from __future__ import annotations

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from flamingo_jax.convert.weights import ConversionError


def expected_shapes(kind: str, config: ml_collections.ConfigDict) -> dict:
    """The unboxed param tree (of ShapeDtypeStruct) that `kind` ('lm', 'vision', 'flamingo') creates."""
    key = jax.random.key(0)
    if kind == "lm":
        from flamingo_jax.models.lm import DecoderLM
        fn = lambda: DecoderLM(config).init(key, jnp.zeros((1, 1), jnp.int32))  # noqa: E731
    elif kind == "vision":
        from flamingo_jax.models.vision import build_vision
        s = config.image_size
        fn = lambda: build_vision(config).init(key, jnp.zeros((1, s, s, 3)))  # noqa: E731
    elif kind == "flamingo":
        from flamingo_jax.models import build
        s = config.vision.image_size
        fn = lambda: build(config).init(
            key,
            jnp.zeros((1, 1), jnp.int32),  # noqa: E731
            jnp.zeros((1, 1, 1, s, s, 3)),
            jnp.ones((1, 1), bool))
    else:
        raise ValueError(f"unknown kind {kind!r}")
    return flax.linen.unbox(jax.eval_shape(fn))["params"]


def check_params(params: dict, kind: str, config: ml_collections.ConfigDict) -> None:
    """Raises ConversionError naming every missing, extra or mis-shaped leaf."""
    want = flax.traverse_util.flatten_dict(expected_shapes(kind, config), sep="/")
    have = flax.traverse_util.flatten_dict(params, sep="/")
    missing = sorted(set(want) - set(have))
    extra = sorted(set(have) - set(want))
    bad = [
        f"{k}: {np.shape(have[k])} != {want[k].shape}" for k in sorted(set(want) & set(have))
        if tuple(np.shape(have[k])) != tuple(want[k].shape)
    ]
    if missing or extra or bad:
        raise ConversionError(f"converted {kind} params do not fit the model: missing {missing}, "
                              f"extra {extra}, wrong shapes {bad}")
