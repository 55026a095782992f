"""Cross-attention from text to visual tokens: GATED XATTN-DENSE, VANILLA XATTN, GRAFTING; the masks.

Which image a text token sees is an input, `media_index: int32[B, L]` (1-based, 0 = none). By default it
is the count of `<image>` tokens up to and including the position (phi of the paper: the `<image>` tag
sees its own image); "next image" mapping is computed by the data pipeline and passed in.

  gated     y += tanh(a_x) XAttn(LN(y), LN(v)); y += tanh(a_d) FFW(LN(y)); then the frozen LM block
  vanilla   one gated cross-attention between the frozen block's self-attention and its FFW; no FFW
  grafting  the frozen LM runs unchanged; new (self-attn, cross-attn, FFW) layers run on its output
With `gating=False` the tanh gates are replaced by 1 (ablation iii). Gates start at 0, so at
initialisation gated, vanilla and gated grafting models compute exactly the frozen LM.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from flamingo_jax.models import stack
from flamingo_jax.models.attention import MultiHeadAttention
from flamingo_jax.models.layers import Dtype, FeedForward, config_with, logical, norm
from flamingo_jax.sharding import constrain

KINDS = ("gated", "vanilla", "grafting")
MASKS = ("previous", "all_previous")


def xattn_config(kind: str = "gated", **overrides) -> ml_collections.ConfigDict:
    """Cross-attention hyper-parameters. Placement: layer i gets one when i >= offset and
    (i - offset) % every == 0 (paper: offset 0, 'every n-th block from the first'; OpenFlamingo:
    offset every - 1), or `middle` (one layer at num_layers // 2), or an explicit `layers` list."""
    if kind not in KINDS:
        raise ValueError(f"unknown cross-attention kind {kind!r}: choose one of {KINDS}")
    defaults = dict(kind=kind, placement="every", every=1, offset=0, layers=(), num_heads=0, head_dim=0, ffw_mult=4,
                    gating=True, mask="previous", act="sqrelu", use_bias=False, norm_eps=1e-5, kv_norm=True)
    return config_with("cross-attention", defaults, overrides)


def placement(c: ml_collections.ConfigDict, num_lm_layers: int) -> tuple[int, ...]:
    """The LM layer indices that get a cross-attention layer (before them; for grafting: how many)."""
    if c.placement == "every":
        if c.every < 1:
            raise ValueError(f"xattn.every must be >= 1, got {c.every}")
        return tuple(range(c.offset, num_lm_layers, c.every))
    if c.placement == "middle":
        return (num_lm_layers // 2, )
    if c.placement == "list":
        layers = tuple(sorted(int(i) for i in c.layers))
        bad = [i for i in layers if not 0 <= i < num_lm_layers]
        if bad or len(set(layers)) != len(layers):
            raise ValueError(f"xattn.layers {c.layers} must be distinct indices in [0, {num_lm_layers})")
        return layers
    raise ValueError(f"unknown xattn.placement {c.placement!r}: use 'every', 'middle' or 'list'")


def default_media_index(tokens: jax.Array, image_token_id: int) -> jax.Array:
    """phi: number of `<image>` tokens at positions <= l. tokens: int32[B, L] -> int32[B, L]."""
    return jnp.cumsum((tokens == image_token_id).astype(jnp.int32), axis=1)


def media_mask(media_index: jax.Array, image_mask: jax.Array, num_tokens_per_image: int,
               mode: str = "previous") -> jax.Array:
    """Which visual tokens each text token may attend to.

    media_index: int32[B, L]; image_mask: bool[B, T] (image present). Visual token k belongs to image
    k // num_tokens_per_image + 1. Returns bool[B, 1, L, T * num_tokens_per_image].
    """
    t = image_mask.shape[1]
    image_of_token = jnp.repeat(jnp.arange(1, t + 1), num_tokens_per_image)  # [T*N]
    present = jnp.repeat(image_mask, num_tokens_per_image, axis=1)[:, None, :]  # [B, 1, T*N]
    idx = media_index[:, :, None]
    if mode == "previous":
        sees = idx == image_of_token
    elif mode == "all_previous":
        sees = (image_of_token <= idx) & (idx > 0)
    else:
        raise ValueError(f"unknown xattn.mask {mode!r}: choose one of {MASKS}")
    return (sees & present)[:, None]


def _gate(module: nn.Module, name: str, enabled: bool, dtype: Dtype) -> jax.Array | float:
    if not enabled:
        return 1.0
    alpha = module.param(name, logical(nn.initializers.zeros, ()), (), jnp.float32)
    return jnp.tanh(alpha).astype(dtype)


class CrossAttention(nn.Module):
    """XAttn(LN(y), LN(visual)) masked per token. y: [B, L, D]; visual: [B, M, Dv] -> [B, L, D]."""

    config: ml_collections.ConfigDict
    num_heads: int
    head_dim: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, y: jax.Array | None, visual: jax.Array | None, mask: jax.Array | None, *,
                 kv: tuple | None = None, prefix: dict | None = None, kv_only: bool = False):
        """kv_only: the projected keys and values of the visual tokens ([B, M, H, Dh] each), what decoding
        caches once per prompt; kv: such keys and values, used instead of projecting `visual`; prefix: the
        cached keys and values of a shared prompt prefix (MultiHeadAttention)."""
        c = self.config
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        attn = MultiHeadAttention(num_heads=self.num_heads, head_dim=self.head_dim, use_bias=c.use_bias, name="attn",
                                  **kw)
        if kv is None:
            visual = norm("layernorm", eps=c.norm_eps, name="kv_norm", **kw)(visual) if c.kv_norm else visual
            visual = visual.astype(self.dtype)
        if kv_only:
            return attn(None, visual, kv_only=True)
        q = norm("layernorm", eps=c.norm_eps, name="query_norm", **kw)(y)
        out, _ = attn(q, visual if kv is None else None, mask=mask, kv=kv, prefix=prefix)
        return out


class GatedCrossAttentionBlock(nn.Module):
    """GATED XATTN-DENSE (dense=True) or the VANILLA gated cross-attention (dense=False).

    y: [B, L, D]; visual: [B, M, Dv]; mask: bool[B, 1, L, M] -> [B, L, D].
    """

    config: ml_collections.ConfigDict
    num_heads: int
    head_dim: int
    dense: bool = True
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, y: jax.Array, visual: jax.Array, mask: jax.Array, *, kv: tuple | None = None,
                 prefix: dict | None = None, kv_only: bool = False) -> jax.Array:
        """kv, prefix, kv_only: see CrossAttention (decoding's cached visual keys and values)."""
        c = self.config
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        xattn = CrossAttention(c, self.num_heads, self.head_dim, name="xattn", **kw)
        if kv_only:
            return xattn(None, visual, None, kv_only=True)
        a = xattn(y, visual, mask, kv=kv, prefix=prefix)
        y = constrain(y + _gate(self, "attn_gate", c.gating, self.dtype) * a, ("act_batch", "act_length", "act_embed"))
        if self.dense:
            h = norm("layernorm", eps=c.norm_eps, name="ffw_norm", **kw)(y)
            f = FeedForward(c.ffw_mult * y.shape[-1], act=c.act, use_bias=c.use_bias, name="ffw", **kw)(h)
            y = constrain(y + _gate(self, "ffw_gate", c.gating, self.dtype) * f,
                          ("act_batch", "act_length", "act_embed"))
        return y


class GraftBlock(nn.Module):
    """GRAFTING: a new causal self-attention, cross-attention and FFW on top of the frozen LM's output.

    y: [B, L, D]; visual: [B, M, Dv]; mask: bool[B, 1, L, M]; self_mask: bool[B, 1, L, S].
    Returns (y, new self-attention cache or None).
    """

    config: ml_collections.ConfigDict
    num_heads: int
    head_dim: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, y, visual, mask, *, self_mask, cache=None, cache_index=None, kv=None, prefix=None,
                 self_prefix=None, kv_only=False):
        """kv, prefix, kv_only: see CrossAttention; self_prefix: the new self-attention's cached prefix."""
        c = self.config
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        xattn = CrossAttention(c, self.num_heads, self.head_dim, name="xattn", **kw)
        if kv_only:
            return xattn(None, visual, None, kv_only=True)
        h = norm("layernorm", eps=c.norm_eps, name="self_norm", **kw)(y)
        s, new_cache = MultiHeadAttention(num_heads=self.num_heads, head_dim=self.head_dim, use_bias=c.use_bias,
                                          name="self_attn", **kw)(h, mask=self_mask, cache=cache,
                                                                  cache_index=cache_index, prefix=self_prefix)
        y = y + _gate(self, "self_gate", c.gating, self.dtype) * s
        a = xattn(y, visual, mask, kv=kv, prefix=prefix)
        y = y + _gate(self, "attn_gate", c.gating, self.dtype) * a
        h = norm("layernorm", eps=c.norm_eps, name="ffw_norm", **kw)(y)
        f = FeedForward(c.ffw_mult * y.shape[-1], act=c.act, use_bias=c.use_bias, name="ffw", **kw)(h)
        return y + _gate(self, "ffw_gate", c.gating, self.dtype) * f, new_cache


class CrossAttentionStack(nn.Module):
    """Owns the cross-attention layers' params (top-level `xattn` subtree), per layer or stacked.

    d_model: the LM width; visual_dim: the resampler width; num_lm_layers: the LM depth.
    """

    config: ml_collections.ConfigDict
    d_model: int
    visual_dim: int
    num_lm_layers: int
    lm_heads: int
    scan_layers: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def setup(self):
        self.positions = placement(self.config, self.num_lm_layers)
        args = (jnp.zeros((1, 1, self.d_model), self.dtype), jnp.zeros((1, 1, self.visual_dim),
                                                                       self.dtype), jnp.ones((1, 1, 1, 1), bool))
        kwargs = dict(self_mask=jnp.ones((1, 1, 1, 1), bool)) if self.config.kind == "grafting" else None
        self.layer_params = stack.declare(self, self.block(), len(self.positions), self.scan_layers, args, kwargs)

    def heads(self) -> tuple[int, int]:
        h = self.config.num_heads or self.lm_heads
        return h, self.config.head_dim or self.d_model // h

    def block(self) -> nn.Module:
        """An unbound layer of this stack's kind; apply it with one layer's params."""
        h, hd = self.heads()
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype, parent=None)
        if self.config.kind == "grafting":
            return GraftBlock(self.config, h, hd, **kw)
        return GatedCrossAttentionBlock(self.config, h, hd, dense=self.config.kind == "gated", **kw)

    def init_cache(self, batch: int, max_len: int, dtype: Dtype) -> list | dict | None:
        """Self-attention caches of grafting layers (None for the other kinds)."""
        if self.config.kind != "grafting":
            return None
        h, hd = self.heads()
        kv = jnp.zeros((batch, max_len, h, hd), dtype)
        one = {"k": kv, "v": kv}
        n = len(self.positions)
        if self.scan_layers:
            return jax.tree.map(lambda x: jnp.broadcast_to(x, (n, *x.shape)), one)
        return [one] * n
