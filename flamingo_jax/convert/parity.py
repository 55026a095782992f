"""Greedy decoding with our KV cache, to check converted weights against a reference's generate().

No torch here: the parity tests compare these token ids with HuggingFace / OpenFlamingo outputs.
"""

from __future__ import annotations

import functools
import json

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np


@functools.lru_cache(maxsize=None)
def _lm_fns(config_json: str):
    from flamingo_jax.models.lm import DecoderLM
    model = DecoderLM(ml_collections.ConfigDict(json.loads(config_json)))
    step = jax.jit(lambda p, t, m, c: model.apply({"params": p}, t, m, c))
    return model, step


def lm_greedy(config: ml_collections.ConfigDict, params: dict, tokens: np.ndarray, steps: int,
              token_mask: np.ndarray | None = None) -> np.ndarray:
    """tokens int32[B, L] (left-padded where token_mask is False) -> greedy continuation int32[B, steps]."""
    model, step = _lm_fns(config.to_json())
    b, l = tokens.shape
    mask = np.ones((b, l), bool) if token_mask is None else np.asarray(token_mask, bool)
    cache = model.apply({"params": params}, b, l + steps, method="init_cache")
    logits, cache = step(params, jnp.asarray(tokens, jnp.int32), jnp.asarray(mask), cache)
    out = [jnp.argmax(logits[:, -1], -1)]
    for _ in range(steps - 1):
        logits, cache = step(params, out[-1][:, None].astype(jnp.int32), jnp.ones((b, 1), bool), cache)
        out.append(jnp.argmax(logits[:, -1], -1))
    return np.asarray(jnp.stack(out, 1))


@functools.lru_cache(maxsize=None)
def _flamingo_fns(config_json: str):
    from flamingo_jax.models import build
    model = build(ml_collections.ConfigDict(json.loads(config_json)))
    encode = jax.jit(lambda p, x: model.apply({"params": p}, x, method="encode"))
    step = jax.jit(lambda p, t, vis, im, m, c: model.apply({"params": p}, t, vis, im, None, m, c, method="decode"))
    return model, encode, step


def flamingo_greedy(config: ml_collections.ConfigDict, params: dict, tokens: np.ndarray, images: np.ndarray,
                    image_mask: np.ndarray, steps: int, token_mask: np.ndarray | None = None) -> np.ndarray:
    """Greedy continuation int32[B, steps] of a Flamingo prompt; new tokens see the last prompt image."""
    model, encode, step = _flamingo_fns(config.to_json())
    b, l = tokens.shape
    mask = np.ones((b, l), bool) if token_mask is None else np.asarray(token_mask, bool)
    visual = encode(params, jnp.asarray(images, jnp.float32))
    cache = model.apply({"params": params}, b, l + steps, method="init_cache")
    im = jnp.asarray(image_mask, bool)
    logits, cache = step(params, jnp.asarray(tokens, jnp.int32), visual, im, jnp.asarray(mask), cache)
    out = [jnp.argmax(logits[:, -1], -1)]
    for _ in range(steps - 1):
        logits, cache = step(params, out[-1][:, None].astype(jnp.int32), visual, im, jnp.ones((b, 1), bool), cache)
        out.append(jnp.argmax(logits[:, -1], -1))
    return np.asarray(jnp.stack(out, 1))
