"""Resamplers: a variable number of visual features per image/video -> a fixed number of visual tokens.

- perceiver (the paper): learned latents attend to concat(features, latents); learned temporal
  embeddings, linearly interpolated when more frames arrive than were trained; no spatial encoding.
- transformer (ablation vi): full self-attention over concat(features, latents), latents read out.
  Same parameters per layer as the perceiver (4 d^2 attention + 2 * ffw_mult d^2 FFW).
- mlp (ablation vi): per-token residual MLP blocks (hidden 6d, i.e. 12 d^2 per layer, the perceiver's
  per-layer budget), then adaptive average pooling of the T*S tokens to num_latents outputs.

All take features [N, F, S, Dv] (N images or videos, F frames, S spatial tokens) and return
[N, num_latents, d].
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from flamingo_jax.models.attention import MultiHeadAttention, dot_product_attention
from flamingo_jax.models.layers import (Dense, DenseKernel, Dtype, FeedForward, NormParams, config_with, logical, norm,
                                        project, standardize)
from flamingo_jax.sharding import constrain

KINDS = ("perceiver", "transformer", "mlp")


def resampler_config(kind: str = "perceiver", **overrides) -> ml_collections.ConfigDict:
    """Resampler hyper-parameters (paper: 6 layers, width 1536, 16 heads, 64 latents)."""
    if kind not in KINDS:
        raise ValueError(f"unknown resampler {kind!r}: choose one of {KINDS}")
    defaults = dict(kind=kind, d_model=0, depth=6, num_heads=16, head_dim=0, ffw_mult=4, num_latents=64, max_frames=8,
                    final_norm=True, act="sqrelu", use_bias=False, norm_eps=1e-5, mlp_hidden_mult=6)
    return config_with("resampler", defaults, overrides)


def interpolate_rows(table: jax.Array, n: int) -> jax.Array:
    """Linearly interpolates a [T, d] table to [n, d], keeping the first and last rows (n > T)."""
    t = table.shape[0]
    pos = jnp.linspace(0.0, t - 1.0, n)
    lo = jnp.floor(pos).astype(jnp.int32)
    hi = jnp.minimum(lo + 1, t - 1)
    w = (pos - lo)[:, None]
    return table[lo] * (1 - w) + table[hi] * w


def add_time_embeddings(module: nn.Module, x: jax.Array, max_frames: int, dtype: Dtype,
                        param_dtype: Dtype) -> jax.Array:
    """x: [N, F, S, d] + time_emb[F] (interpolated if F > max_frames); a no-op when max_frames == 0."""
    if not max_frames:
        return x
    d = x.shape[-1]
    table = module.param("time_embeddings", logical(nn.initializers.normal(0.02), ("frames", "embed")), (max_frames, d),
                         param_dtype)
    f = x.shape[1]
    rows = table[:f] if f <= max_frames else interpolate_rows(table, f)
    return x + rows.astype(dtype)[None, :, None, :]


def flatten_features(module: nn.Module, features: jax.Array, c: ml_collections.ConfigDict, dtype: Dtype,
                     param_dtype: Dtype) -> jax.Array:
    """features [N, F, S, Dv] -> [N, F*S, d]: projected to the resampler width d if it differs (a parameter
    'input_projection' of `module`), plus the temporal embeddings."""
    x = features.astype(dtype)
    d = c.d_model or x.shape[-1]
    if d != x.shape[-1]:
        x = Dense(d, ("embed", "embed"), name="input_projection", dtype=dtype, param_dtype=param_dtype)(x)
    x = add_time_embeddings(module, x, c.max_frames, dtype, param_dtype)
    n, f, s, _ = x.shape
    return x.reshape(n, f * s, d)


class LatentAttention(nn.Module):
    """Latents attend to [media; latents] (the perceiver), with the media LayerNorm folded into the key and
    value projections: LN(x) W = x_hat (scale * W) + offset W, where x_hat, the standardized media, is the same
    in every layer. x_hat comes from the frozen vision encoder, so no gradient flows into it: the backward
    pass then has no input-gradient matmul for the media half of the keys and values (the scale's gradient
    comes out of the weight-gradient matmul). Same params, same function as attending to concat(LN(x), LN(z)).

    x_hat: [N, M, d]; media_scale, media_bias: [d]; zn: [N or 1, K, d] (1: the same latents for every item,
    as in the first layer, whose queries and latent keys/values are then computed once). Returns [N, K, d].
    """

    num_heads: int
    head_dim: int
    use_bias: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x_hat: jax.Array, media_scale: jax.Array, media_bias: jax.Array | None,
                 zn: jax.Array) -> jax.Array:
        d = zn.shape[-1]
        heads = (self.num_heads, self.head_dim)
        kw = dict(use_bias=self.use_bias, param_dtype=self.param_dtype)
        axes = ("embed", "heads", "head_dim")
        q = project(zn, *DenseKernel(heads, axes, name="query", **kw)((d, )), dtype=self.dtype)
        kv = []
        for name in ("key", "value"):
            kernel, bias = DenseKernel(heads, ("embed", "kv_heads", "head_dim"), name=name, **kw)((d, ))
            folded = kernel * media_scale.astype(kernel.dtype)[:, None, None]
            offset = bias
            if media_bias is not None:
                shift = jnp.einsum("d,dhk->hk", media_bias.astype(kernel.dtype), kernel)
                offset = shift if offset is None else offset + shift
            from_media = project(x_hat, folded, offset, dtype=self.dtype)
            from_latents = project(zn, kernel, bias, dtype=self.dtype)
            from_latents = jnp.broadcast_to(from_latents, (x_hat.shape[0], *from_latents.shape[1:]))
            kv.append(jnp.concatenate([from_media, from_latents], axis=1))
        q = jnp.broadcast_to(q, (x_hat.shape[0], *q.shape[1:]))
        out = dot_product_attention(q, kv[0], kv[1])
        return Dense(d, ("heads", "head_dim", "embed"), in_dims=2, name="out", dtype=self.dtype, **kw)(out)


class PerceiverLayer(nn.Module):
    """z <- z + Attn(q=LN(z), kv=[LN(x); LN(z)]); z <- z + FFW(LN(z)).

    x_hat: [N, M, d], the media standardized once for all layers (see LatentAttention); z: [N or 1, K, d].
    Returns z [N, K, d].
    """

    config: ml_collections.ConfigDict
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x_hat: jax.Array, z: jax.Array) -> jax.Array:
        c = self.config
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        d = z.shape[-1]
        scale, bias = NormParams(name="media_norm", param_dtype=self.param_dtype)(d)
        zn = norm("layernorm", eps=c.norm_eps, name="latent_norm", **kw)(z)
        z = z + LatentAttention(c.num_heads, c.head_dim or d // c.num_heads, c.use_bias, name="attn", **kw)(
            x_hat, scale, bias, zn)
        ffw = FeedForward(c.ffw_mult * d, act=c.act, use_bias=c.use_bias, name="ffw", **kw)
        return z + ffw(norm("layernorm", eps=c.norm_eps, name="ffw_norm", **kw)(z))


class TransformerResamplerLayer(nn.Module):
    """Every token of [LN(x); LN(z)] attends to all of them, then a FFW; the perceiver layer's params.

    x: [N, M, d], z: [N, K, d] -> (x, z) updated."""

    config: ml_collections.ConfigDict
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, z: jax.Array) -> tuple[jax.Array, jax.Array]:
        c = self.config
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        d = z.shape[-1]
        attn = MultiHeadAttention(num_heads=c.num_heads, head_dim=c.head_dim or d // c.num_heads, use_bias=c.use_bias,
                                  name="attn", **kw)
        xn = norm("layernorm", eps=c.norm_eps, name="media_norm", **kw)(x)
        zn = norm("layernorm", eps=c.norm_eps, name="latent_norm", **kw)(z)
        kv = jnp.concatenate([xn, zn], axis=1)
        y = kv + attn(kv, kv)[0]
        y = y + FeedForward(c.ffw_mult * d, act=c.act, use_bias=c.use_bias, name="ffw", **kw)(norm(
            "layernorm", eps=c.norm_eps, name="ffw_norm", **kw)(y))
        m = x.shape[1]
        return y[:, :m], y[:, m:]


def pooling_matrix(num_in: int, num_out: int) -> np.ndarray:
    """Adaptive average pooling [num_out, num_in]: output j averages inputs floor(j*I/O)..ceil((j+1)*I/O)."""
    m = np.zeros((num_out, num_in), np.float32)
    for j in range(num_out):
        lo = (j * num_in) // num_out
        hi = max(-(-((j + 1) * num_in) // num_out), lo + 1)
        m[j, lo:hi] = 1.0 / (hi - lo)
    return m


class Resampler(nn.Module):
    """The resampler of config.kind (see the module docstring). features: [N, F, S, Dv] -> [N, num_latents, d].

    One module for the three kinds: they share the input projection, the temporal embeddings and the final
    norm, and keep the param names they always had (latents, layers_i; or norm_i, mlp_i)."""

    config: ml_collections.ConfigDict
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, features: jax.Array) -> jax.Array:
        c = self.config
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        x = flatten_features(self, features, c, self.dtype, self.param_dtype)  # [N, F*S, d]
        n, d = x.shape[0], x.shape[-1]
        if c.kind == "mlp":
            for i in range(c.depth):
                h = norm("layernorm", eps=c.norm_eps, name=f"norm_{i}", **kw)(x)
                x = x + FeedForward(c.mlp_hidden_mult * d, act=c.act, use_bias=c.use_bias, name=f"mlp_{i}", **kw)(h)
            pool = jnp.asarray(pooling_matrix(x.shape[1], c.num_latents), self.dtype)
            z = jnp.einsum("ot,ntd->nod", pool, x)
        else:
            x = constrain(x, ("act_batch", "act_length", "act_embed"))
            latents = self.param("latents", logical(nn.initializers.normal(1.0), ("latents", "embed")),
                                 (c.num_latents, d), self.param_dtype)
            if c.kind == "transformer":
                z = jnp.broadcast_to(latents.astype(self.dtype), (n, c.num_latents, d))
                for i in range(c.depth):
                    x, z = TransformerResamplerLayer(c, name=f"layers_{i}", **kw)(x, z)
            else:
                # The media never change across perceiver layers: standardize them once; the first layer's
                # latents are the same for every item (broadcast inside the layer, after their projections).
                x_hat = standardize(x, c.norm_eps, self.dtype)
                z = latents.astype(self.dtype)[None]
                for i in range(c.depth):
                    z = PerceiverLayer(c, name=f"layers_{i}", **kw)(x_hat, z)
                z = jnp.broadcast_to(z, (n, *z.shape[1:]))  # depth 0
        if c.final_norm:
            z = norm("layernorm", eps=c.norm_eps, name="final_norm", **kw)(z)
        return constrain(z, ("act_batch", "act_latents", "act_embed"))


def build_resampler(c: ml_collections.ConfigDict, dtype: Dtype, param_dtype: Dtype) -> nn.Module:
    """The resampler module for `c.kind` (unnamed: assign it in a parent's setup)."""
    return Resampler(c, dtype=dtype, param_dtype=param_dtype)


def resampler_width(c: ml_collections.ConfigDict, vision_dim: int) -> int:
    return c.d_model or vision_dim
