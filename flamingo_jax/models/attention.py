"""Multi-head attention used by the LM, the resamplers and the cross-attention layers.

Masking follows deepmind-research's perceiver `attend()`: masked scores get a large finite negative value
(never -inf, so no NaNs appear in gradients), and rows with no visible key are set to zero after the
softmax. That second rule is what makes "a token before the first image gets no cross-attention output"
exact rather than approximate.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from flamingo_jax.models.layers import Dense, Dtype
from flamingo_jax.sharding import constrain

LARGE_NEGATIVE = -0.7 * float(jnp.finfo(jnp.float32).max)


def dot_product_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array | None = None,
                          bias: jax.Array | None = None, scale: float | None = None) -> jax.Array:
    """Softmax attention with grouped key/value heads.

    q: [B, Lq, H, Dh]; k, v: [B, Lk, G, Dh] with H a multiple of G (G = H is plain MHA);
    mask: bool, broadcastable to [B, H, Lq, Lk], True = may attend (or a media_attention.OwnImageMask, which
    computes the same without scoring the masked images); bias: float, broadcastable likewise.
    Returns [B, Lq, H, Dh]. Scores and softmax in float32; rows without any visible key output zeros.
    """
    if hasattr(mask, "attend"):  # media_attention.OwnImageMask: the per-image mask kept as indices
        return mask.attend(q, k, v, bias, scale)
    b, lq, h, dh = q.shape
    g = k.shape[2]
    if h % g:
        raise ValueError(f"{h} query heads are not a multiple of {g} key/value heads")
    scale = dh**-0.5 if scale is None else scale
    heads_major = g == h and lq > 1
    if heads_major:
        # Heads-major batched matmuls: XLA:CPU runs the einsum form below ~1.5x slower on many short sequences
        # (the resampler's 68 x [64 x 128] per layer: 73 -> 48 ms, same values) and no faster on long ones;
        # for one query token (a decode step) the einsum form is 2-3x faster, so it keeps that.
        qt, kt = jnp.swapaxes(q, 1, 2), jnp.swapaxes(k, 1, 2)  # [B, H, L, Dh]
        scores = jnp.matmul(qt, jnp.swapaxes(kt, -1, -2), preferred_element_type=jnp.float32) * scale
    elif g == h:
        # Plain multi-head attention as a 4-D einsum: XLA:CPU lowers the 5-D grouped form below (with its unit
        # group axis) to a dot it runs ~3x slower at long lengths (measured at B=8, L=1024, H=4, Dh=16).
        scores = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32) * scale
    else:
        qg = q.reshape(b, lq, g, h // g, dh)
        scores = jnp.einsum("bqgrd,bkgd->bgrqk", qg, k, preferred_element_type=jnp.float32) * scale
        scores = scores.reshape(b, h, lq, k.shape[1])
    if bias is not None:
        scores = scores + bias.astype(jnp.float32)
    if mask is not None:
        scores = jnp.where(mask, scores, LARGE_NEGATIVE)
    weights = jax.nn.softmax(scores, axis=-1)
    if mask is not None:
        weights = jnp.where(jnp.any(mask, axis=-1, keepdims=True), weights, 0.0)
    weights = weights.astype(v.dtype)
    if heads_major:
        return jnp.swapaxes(jnp.matmul(weights, jnp.swapaxes(v, 1, 2)), 1, 2)
    if g == h:
        return jnp.einsum("bhqk,bkhd->bqhd", weights, v)
    out = jnp.einsum("bgrqk,bkgd->bqgrd", weights.reshape(b, g, h // g, lq, k.shape[1]), v)
    return out.reshape(b, lq, h, dh)


def _grouped_scores(q: jax.Array, k: jax.Array, scale: float) -> jax.Array:
    """q [P, Q, H, Dh], k [P, S, G, Dh] -> float32 scores [P, H, Q, S] (grouped key/value heads as above)."""
    p, lq, h, dh = q.shape
    g = k.shape[2]
    if g == h:
        return jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32) * scale
    qg = q.reshape(p, lq, g, h // g, dh)
    s = jnp.einsum("bqgrd,bkgd->bgrqk", qg, k, preferred_element_type=jnp.float32) * scale
    return s.reshape(p, h, lq, k.shape[1])


def _grouped_values(w: jax.Array, v: jax.Array) -> jax.Array:
    """w [P, H, Q, S], v [P, S, G, Dh] -> [P, Q, H, Dh]."""
    p, h, lq, s = w.shape
    g = v.shape[2]
    if g == h:
        return jnp.einsum("bhqk,bkhd->bqhd", w, v)
    out = jnp.einsum("bgrqk,bkgd->bqgrd", w.reshape(p, g, h // g, lq, s), v)
    return out.reshape(p, lq, h, v.shape[-1])


def multi_part_attention(q: jax.Array, parts, scale: float | None = None) -> jax.Array:
    """Softmax attention over the concatenation of several key/value sets, without building it.

    q: [N, Lq, H, Dh]. parts: a sequence of (k, v, mask, bias) with k, v: [P, S, G, Dh] where P divides N and
    query row r reads key row r // (N // P): a prefix cached once for P prompts serves the N // P beams or
    candidates of each prompt (their rows contiguous) without being copied N // P times. mask (bool) and
    bias (float) are broadcastable to [P, H, (N // P) * Lq, S], the queries of one key row flattened
    row-major, or None. Returns [N, Lq, H, Dh]; it equals dot_product_attention over the keys of every part
    concatenated (up to fp32 rounding: the parts' softmax statistics are merged as in flash attention), rows
    with no visible key anywhere giving zeros."""
    n, lq, h, dh = q.shape
    scale = dh**-0.5 if scale is None else scale
    parts = [part for part in parts if part[0].shape[1] > 0]  # an empty part (no images) adds nothing

    def to_rows(x, p):  # [P, H, R*Lq] -> [N, Lq, H]
        return x.transpose(0, 2, 1).reshape(n, lq, h)

    def to_groups(x, p):  # [N, Lq, H] -> [P, H, R*Lq]
        return x.reshape(p, (n // p) * lq, h).transpose(0, 2, 1)

    scores, row_max = [], []
    for k, v, mask, bias in parts:
        p = k.shape[0]
        if n % p:
            raise ValueError(f"{n} query rows do not split into groups over {p} key rows")
        s = _grouped_scores(q.reshape(p, (n // p) * lq, h, dh), k.astype(q.dtype), scale)
        if bias is not None:
            s = s + bias.astype(jnp.float32)
        if mask is not None:
            s = jnp.where(mask, s, LARGE_NEGATIVE)
        scores.append(s)
        row_max.append(to_rows(jnp.max(s, axis=-1), p))
    m = jax.lax.stop_gradient(functools.reduce(jnp.maximum, row_max))  # [N, Lq, H]
    total, out = 0.0, 0.0
    for (k, v, _, _), s in zip(parts, scores):
        p = k.shape[0]
        e = jnp.exp(s - to_groups(m, p)[..., None])
        total = total + to_rows(jnp.sum(e, axis=-1), p)
        out = out + _grouped_values(e.astype(v.dtype), v.astype(q.dtype)).reshape(n, lq, h, dh).astype(jnp.float32)
    visible = m > LARGE_NEGATIVE / 2  # all keys masked: every score is LARGE_NEGATIVE, so is the max
    out = jnp.where(visible[..., None], out / jnp.where(visible, total, 1.0)[..., None], 0.0)
    return out.astype(q.dtype)


def rotary_embedding(x: jax.Array, positions: jax.Array, *, theta: float = 10000.0,
                     rotary_dim: int | None = None) -> jax.Array:
    """Rotary positions, rotate-half convention (LLaMA, GPT-NeoX), on the first `rotary_dim` features.

    x: [B, L, H, Dh]; positions: int32[B, L]. Returns x with its first rotary_dim channels rotated.
    """
    dh = x.shape[-1]
    rd = dh if rotary_dim is None else rotary_dim
    inv_freq = 1.0 / (theta**(jnp.arange(0, rd, 2, dtype=jnp.float32) / rd))
    angles = positions.astype(jnp.float32)[..., None] * inv_freq  # [B, L, rd/2]
    cos = jnp.cos(jnp.concatenate([angles, angles], -1))[:, :, None, :]
    sin = jnp.sin(jnp.concatenate([angles, angles], -1))[:, :, None, :]
    rot, rest = x[..., :rd].astype(jnp.float32), x[..., rd:]
    half1, half2 = rot[..., :rd // 2], rot[..., rd // 2:]
    rotated = rot * cos + jnp.concatenate([-half2, half1], -1) * sin
    return jnp.concatenate([rotated.astype(x.dtype), rest], -1)


def alibi_slopes(num_heads: int, max_bias: float = 8.0) -> jax.Array:
    """ALiBi head slopes (MPT's formula, which pads to the next power of two). Returns float32[H]."""
    n = 1 << (num_heads - 1).bit_length()
    slopes = 1.0 / (2.0**(jnp.arange(1, n + 1, dtype=jnp.float32) * (max_bias / n)))
    if n != num_heads:
        slopes = jnp.concatenate([slopes[1::2], slopes[::2]])[:num_heads]
    return slopes


def alibi_bias(num_heads: int, key_positions: jax.Array, max_bias: float = 8.0) -> jax.Array:
    """Per-head linear bias on key positions: slope_h * k (softmax-equivalent to -slope_h * (q - k) under
    a causal mask). key_positions: int32[B, Lk]. Returns float32[B, H, 1, Lk]."""
    slopes = alibi_slopes(num_heads, max_bias)
    return slopes[None, :, None, None] * key_positions.astype(jnp.float32)[:, None, None, :]


class MultiHeadAttention(nn.Module):
    """Attention with separate q/k/v/out projections, optional rotary positions and a KV cache.

    x: [B, Lq, Din]; context: [B, Lk, Dctx] (self-attention when None). With `cache` (self-attention
    only) the new keys/values are written at `cache_index` and attention runs over the whole cache:
    cache = {'k': [B, S, G, Dh], 'v': [B, S, G, Dh]}. Returns (y [B, Lq, Dout], new_cache or None).

    Decoding (flamingo_jax.evaluation.decoding): `kv_only=True` returns just the projected (k, v) of the
    context (the visual tokens' cross-attention keys/values, projected once per prompt); `kv=(k, v)` uses
    such projections instead of projecting `context`; `prefix={'k', 'v': [P, S, G, Dh], 'mask', 'bias'}` is
    a cached prefix attended before the own keys, shared by groups of rows (see multi_part_attention).
    """

    num_heads: int
    head_dim: int
    num_kv_heads: int | None = None
    out_features: int | None = None
    use_bias: bool = False
    rope_theta: float | None = None
    rotary_dim: int | None = None
    scale: float | None = None
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, context: jax.Array | None = None, *, mask: jax.Array | None = None,
                 bias: jax.Array | None = None, positions: jax.Array | None = None, cache: dict | None = None,
                 cache_index: jax.Array | None = None, prefix: dict | None = None,
                 kv: tuple[jax.Array, jax.Array] | None = None, kv_only: bool = False):
        g = self.num_kv_heads or self.num_heads
        kw = dict(use_bias=self.use_bias, dtype=self.dtype, param_dtype=self.param_dtype)
        kv_in = x if context is None else context
        if not kv_only:
            q = Dense((self.num_heads, self.head_dim), ("embed", "heads", "head_dim"), name="query", **kw)(x)
        if kv is None:
            k = Dense((g, self.head_dim), ("embed", "kv_heads", "head_dim"), name="key", **kw)(kv_in)
            v = Dense((g, self.head_dim), ("embed", "kv_heads", "head_dim"), name="value", **kw)(kv_in)
        else:
            k, v = kv
        if kv_only:
            return k, v
        if self.rope_theta is not None:
            if positions is None:
                raise ValueError("rotary attention needs positions")
            q = rotary_embedding(q, positions, theta=self.rope_theta, rotary_dim=self.rotary_dim)
            k = rotary_embedding(k, positions, theta=self.rope_theta, rotary_dim=self.rotary_dim)
        # Heads follow their projections' `model` split (Megatron): attention needs no communication.
        q = constrain(q, ("act_batch", "act_length", "act_heads", None))
        k = constrain(k, ("act_batch", "act_length", "act_kv_heads", None))
        v = constrain(v, ("act_batch", "act_length", "act_kv_heads", None))
        new_cache = None
        if cache is not None:
            idx = (0, cache_index, 0, 0)
            k = jax.lax.dynamic_update_slice(cache["k"], k.astype(cache["k"].dtype), idx)
            v = jax.lax.dynamic_update_slice(cache["v"], v.astype(cache["v"].dtype), idx)
            new_cache = {"k": k, "v": v}
        if prefix is None:
            out = dot_product_attention(q, k.astype(q.dtype), v.astype(q.dtype), mask, bias, self.scale)
        else:
            out = multi_part_attention(q, [(prefix["k"], prefix["v"], prefix["mask"], prefix.get("bias")),
                                           (k, v, mask, bias)], self.scale)
        y = Dense(self.out_features or x.shape[-1], ("heads", "head_dim", "embed"), in_dims=2, name="out", **kw)(out)
        return constrain(y, ("act_batch", "act_length", "act_embed")), new_cache
