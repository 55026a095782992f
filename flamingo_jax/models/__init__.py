"""Flamingo models: `build(config.model)` and the config constructors of each part."""

from __future__ import annotations

import ml_collections

from flamingo_jax.models.flamingo import Flamingo
from flamingo_jax.models.lm import lm_config
from flamingo_jax.models.resampler import resampler_config
from flamingo_jax.models.vision import vision_config
from flamingo_jax.models.xattn import xattn_config

SUBTREES = ("vision", "resampler", "lm", "xattn", "new_tokens")
FROZEN_BY_DEFAULT = ("vision", "lm")


def model_config(vision: ml_collections.ConfigDict, lm: ml_collections.ConfigDict, resampler: ml_collections.ConfigDict,
                 xattn: ml_collections.ConfigDict, *, num_new_tokens: int = 2, image_token_offset: int = 0,
                 eoc_token_offset: int = 1, dtype: str = "float32", frozen_param_dtype: str = "float32",
                 trainable_param_dtype: str = "float32", remat: str = "none") -> ml_collections.ConfigDict:
    """config.model. The added tokens take ids lm.vocab_size + offset (default `<image>` = V, `<EOC>` = V+1).

    remat: 'none' (keep activations for the backward pass), 'full' (each cross-attention + LM block group
    keeps only its input and is recomputed in the backward pass: activation memory per layer group instead
    of per op, at the cost of about one more forward of the LM), or 'dots' (keep matmul outputs, recompute
    the elementwise rest).

    Precision: `dtype` is the compute dtype; params are stored in `frozen_param_dtype` for vision and lm
    and `trainable_param_dtype` for the rest (the paper: bf16 activations and frozen params, fp32 trainable).
    """
    v = lm.vocab_size
    pd = {k: (frozen_param_dtype if k in FROZEN_BY_DEFAULT else trainable_param_dtype) for k in SUBTREES}
    return ml_collections.ConfigDict(
        dict(
            vision=vision,
            lm=lm,
            resampler=resampler,
            xattn=xattn,
            num_new_tokens=num_new_tokens,
            image_token_id=v + image_token_offset,
            eoc_token_id=v + eoc_token_offset,
            dtype=dtype,
            param_dtype=pd,
            remat=remat,
        ))


def openflamingo_config(vision: ml_collections.ConfigDict, lm: ml_collections.ConfigDict,
                        cross_attn_every_n_layers: int, *, add_pad_token: bool = True,
                        dtype: str = "float32") -> ml_collections.ConfigDict:
    """The `openflamingo` compatibility setting for OpenFlamingo checkpoints, exactly as OpenFlamingo 2.0.1:
    no biases, 8x64 heads, GELU, perceiver without time embeddings plus a final LayerNorm, cross-attention
    without a key/value norm inserted before block i when (i+1) % n == 0, FFW on every token. Added token
    ids follow its tokenizer: `<|endofchunk|>` = V, `<image>` = V+1, then `<PAD>` = V+2 if it lacked one."""
    resampler = resampler_config("perceiver", depth=6, num_heads=8, head_dim=64, ffw_mult=4, num_latents=64,
                                 max_frames=0, final_norm=True, act="gelu", use_bias=False, norm_eps=1e-5)
    n = cross_attn_every_n_layers
    xattn = xattn_config("gated", placement="every", every=n, offset=n - 1, num_heads=8, head_dim=64, ffw_mult=4,
                         act="gelu", use_bias=False, kv_norm=False, norm_eps=1e-5)
    cfg = model_config(vision, lm, resampler, xattn, num_new_tokens=3 if add_pad_token else 2, image_token_offset=1,
                       eoc_token_offset=0, dtype=dtype)
    return cfg


def build(model: ml_collections.ConfigDict) -> Flamingo:
    """The Flamingo module for config.model."""
    return Flamingo(model)


__all__ = [
    "Flamingo", "build", "lm_config", "model_config", "openflamingo_config", "resampler_config", "vision_config",
    "xattn_config", "SUBTREES"
]
