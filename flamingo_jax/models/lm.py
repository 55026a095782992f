"""Decoder-only language model covering the families Flamingo builds on or imports.

One pre-norm block with switches: LLaMA/Mistral (RMSNorm, RoPE, SwiGLU, no biases, GQA), Chinchilla as in
the paper (RMSNorm, rotary stand-in for relative positions, GELU FFW 4D), GPT-2 (LayerNorm, learned
positions, tanh-GELU, biases, tied head), OPT (learned positions with offset 2, ReLU), MPT (ALiBi,
LayerNorm without bias, no biases, tied), GPT-NeoX (partial rotary, parallel residual).

The LM owns its embedding, its layer stack (see stack.py) and its head. The Flamingo composite drives the
layer loop itself so it can interleave cross-attention; `DecoderLM.__call__` is the plain LM.

Cache (incremental decoding), a dict:
  layers:        per layer {'k','v': [B, S, G, Dh]} (a list, or stacked on a leading axis with scan)
  index:         int32[]   next slot to write (all rows write the same slot; rows are left-padded)
  key_mask:      bool[B, S] slot holds a real token
  next_position: int32[B]  position id of the row's next real token
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from flamingo_jax.models import stack
from flamingo_jax.models.attention import MultiHeadAttention, alibi_bias
from flamingo_jax.models.layers import Dense, Dtype, config_with, FeedForward, logical, norm
from flamingo_jax.sharding import constrain

RESIDUAL = ("act_batch", "act_length", "act_embed")  # the residual stream h [B, L, D]

FAMILIES = ("chinchilla", "llama", "gpt2", "opt", "mpt", "neox")


def lm_config(family: str = "chinchilla", **overrides) -> ml_collections.ConfigDict:
    """LM hyper-parameters with the family's conventions; any field can be overridden."""
    if family not in FAMILIES:
        raise ValueError(f"unknown LM family {family!r}: choose one of {FAMILIES}")
    defaults = dict(family=family, vocab_size=32000, d_model=2048, num_layers=24, num_heads=16, num_kv_heads=0,
                    head_dim=0, d_ff=0, ffw_mult=4, act="gelu", gated_ffw=False, norm="rmsnorm", norm_eps=1e-6,
                    norm_bias=False, use_bias=False, positions="rope", rope_theta=10000.0, rotary_pct=1.0, max_len=2048,
                    learned_pos_offset=0, parallel_residual=False, tie_embeddings=False, scan_layers=False,
                    embed_init_std=0.02)
    family_defaults = {
        "chinchilla": {},
        "llama": dict(act="silu", gated_ffw=True, norm_eps=1e-5),
        "gpt2": dict(act="gelu_tanh", norm="layernorm", norm_eps=1e-5, norm_bias=True, use_bias=True,
                     positions="learned", tie_embeddings=True),
        "opt": dict(act="relu", norm="layernorm", norm_eps=1e-5, norm_bias=True, use_bias=True, positions="learned",
                    learned_pos_offset=2, tie_embeddings=True),
        "mpt": dict(act="gelu", norm="layernorm", norm_eps=1e-5, norm_bias=False, positions="alibi",
                    tie_embeddings=True),
        "neox": dict(act="gelu", norm="layernorm", norm_eps=1e-5, norm_bias=True, use_bias=True, rotary_pct=0.25,
                     parallel_residual=True),
    }[family]
    return config_with("LM", {**defaults, **family_defaults}, overrides)


def head_dim(c: ml_collections.ConfigDict) -> int:
    return c.head_dim or c.d_model // c.num_heads


def ffw_width(c: ml_collections.ConfigDict) -> int:
    return c.d_ff or c.ffw_mult * c.d_model


class DecoderBlock(nn.Module):
    """One pre-norm decoder block. h: [B, L, D] -> ([B, L, D], new layer cache or None).

    `mid`, if given, maps the residual stream between self-attention and the FFW (VANILLA XATTN).
    `prefix`, if given, is a cached prompt prefix attended before `cache` (MultiHeadAttention).
    """

    config: ml_collections.ConfigDict
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, h, *, positions, mask, bias=None, cache=None, cache_index=None, mid=None, prefix=None):
        c = self.config
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        nkw = dict(eps=c.norm_eps, use_bias=c.norm_bias, **kw)
        hd = head_dim(c)
        attn = MultiHeadAttention(num_heads=c.num_heads, head_dim=hd, num_kv_heads=c.num_kv_heads or None,
                                  use_bias=c.use_bias, rope_theta=c.rope_theta if c.positions == "rope" else None,
                                  rotary_dim=int(hd * c.rotary_pct), name="attn", **kw)
        a, new_cache = attn(
            norm(c.norm, name="attn_norm", **nkw)(h), mask=mask, bias=bias, positions=positions, cache=cache,
            cache_index=cache_index, prefix=prefix)
        mlp = FeedForward(ffw_width(c), act=c.act, gated=c.gated_ffw, use_bias=c.use_bias, name="mlp", **kw)
        if c.parallel_residual:
            if mid is not None:
                raise ValueError("a mid-block cross-attention needs a sequential (not parallel) residual")
            return constrain(h + a + mlp(norm(c.norm, name="mlp_norm", **nkw)(h)), RESIDUAL), new_cache
        h = constrain(h + a, RESIDUAL)
        if mid is not None:
            h = mid(h)
        return constrain(h + mlp(norm(c.norm, name="mlp_norm", **nkw)(h)), RESIDUAL), new_cache


def dummy_block_inputs(c: ml_collections.ConfigDict, dtype: Dtype) -> tuple[tuple, dict]:
    """Smallest inputs that trace a block (its params do not depend on the lengths)."""
    return (jnp.zeros((1, 1, c.d_model), dtype), ), dict(positions=jnp.zeros((1, 1), jnp.int32), mask=jnp.ones(
        (1, 1, 1, 1), bool))


def layer_prefix(prefix: dict | None, kv: dict | None) -> dict | None:
    """One layer's part of a cached prompt prefix: its keys/values kv with the prefix's mask and bias."""
    return None if kv is None else dict(kv, mask=prefix["mask"], bias=prefix["bias"])


def loop_blocks(block: DecoderBlock, h: jax.Array, params: list, caches: list | None, attn: dict, *, mid=None,
                prefix: dict | None = None, wrap=lambda fn: fn) -> tuple[jax.Array, list | None]:
    """Per-layer params: applies `block` with each layer's params in a Python loop.

    h: [B, L, D]; params, caches: one entry per layer (caches None without a cache); attn: the blocks'
    positions/mask/bias/cache_index; mid: the first block's mid-block function (VANILLA XATTN); prefix:
    {'layers': one {'k', 'v'} per layer, 'mask', 'bias'} or None; wrap: applied to each layer's function
    (remat). Returns (h, the layers' new caches or None)."""
    new = None if caches is None else list(caches)
    for i, p in enumerate(params):
        kv = None if prefix is None else prefix["layers"][i]
        apply = functools.partial(block.apply, {"params": p}, mid=mid if i == 0 else None,
                                  cache=None if new is None else new[i], prefix=layer_prefix(prefix, kv), **attn)
        h, layer_cache = wrap(apply)(h)
        if new is not None:
            new[i] = layer_cache
    return h, new


def scan_blocks(block: DecoderBlock, h: jax.Array, params, caches, attn: dict, *, mid=None, prefix: dict | None = None):
    """Stacked params: applies `block` with each row of `params` in order with lax.scan (compile time flat
    in depth). Arguments as loop_blocks', with trees stacked on a leading layer axis instead of lists; a
    `mid` function runs in the first layer, applied before the scan. Returns (h, new stacked caches or None)."""
    n = jax.tree.leaves(params)[0].shape[0]
    kvs = None if prefix is None else prefix["layers"]
    if mid is not None:
        first = jax.tree.map(lambda x: x[0], params)
        first_cache = None if caches is None else jax.tree.map(lambda x: x[0], caches)
        first_kv = None if kvs is None else jax.tree.map(lambda x: x[0], kvs)
        h, c0 = block.apply({"params": first}, h, mid=mid, cache=first_cache, prefix=layer_prefix(prefix, first_kv),
                            **attn)
        if n == 1:
            return h, None if caches is None else jax.tree.map(lambda x: x[None], c0)
        rest = jax.tree.map(lambda x: x[1:], params)
        rest_cache = None if caches is None else jax.tree.map(lambda x: x[1:], caches)
        rest_prefix = None if kvs is None else dict(prefix, layers=jax.tree.map(lambda x: x[1:], kvs))
        h, cr = scan_blocks(block, h, rest, rest_cache, attn, prefix=rest_prefix)
        if caches is None:
            return h, None
        return h, jax.tree.map(lambda a, r: jnp.concatenate([a[None], r]), c0, cr)

    def body(carry, xs):
        p, layer_cache, kv = xs
        return block.apply({"params": p}, carry, cache=layer_cache, prefix=layer_prefix(prefix, kv), **attn)

    return jax.lax.scan(body, h, (params, caches, kvs))


class DecoderLM(nn.Module):
    """Token embedding, layer stack and head. See the module docstring for the cache layout."""

    config: ml_collections.ConfigDict
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def setup(self):
        c = self.config
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        init = nn.initializers.normal(c.embed_init_std)
        self.embed = nn.Embed(c.vocab_size, c.d_model, embedding_init=logical(init, ("vocab", "embed")), **kw)
        if c.positions == "learned":
            self.pos_embed = nn.Embed(c.max_len + c.learned_pos_offset, c.d_model,
                                      embedding_init=logical(init, ("positions", "embed")), **kw)
        self.final_norm = norm(c.norm, eps=c.norm_eps, use_bias=c.norm_bias, **kw)
        if not c.tie_embeddings:
            self.head = Dense(c.vocab_size, ("embed", "vocab"), **kw)
        args, kwargs = dummy_block_inputs(c, self.dtype)
        self.layer_params = stack.declare(self, self.block(), c.num_layers, c.scan_layers, args, kwargs)

    def block(self) -> DecoderBlock:
        """An unbound block; apply it with one layer's params."""
        return DecoderBlock(self.config, dtype=self.dtype, param_dtype=self.param_dtype, parent=None)

    def embed_tokens(self, tokens: jax.Array, positions: jax.Array, extra_rows: jax.Array | None = None) -> jax.Array:
        """tokens, positions: int32[B, L] -> float[B, L, D].

        Ids >= vocab_size look up `extra_rows` [n_extra, D] (the learnt rows of added tokens).
        """
        v = self.config.vocab_size
        h = self.embed(jnp.clip(tokens, 0, v - 1))
        if extra_rows is not None:
            extra = jnp.take(extra_rows, jnp.clip(tokens - v, 0, extra_rows.shape[0] - 1), axis=0)
            h = jnp.where((tokens >= v)[..., None], extra.astype(h.dtype), h)
        if self.config.positions == "learned":
            h = h + self.pos_embed(positions + self.config.learned_pos_offset)
        return h.astype(self.dtype)

    def logits(self, h: jax.Array) -> jax.Array:
        """h: [B, L, D] -> (logits float32[B, L, V], normed hidden [B, L, D])."""
        h = self.final_norm(h)
        if self.config.tie_embeddings:
            b, l, d = h.shape
            out = jnp.dot(h.reshape(b * l, d), self.embed.embedding.T.astype(self.dtype)).reshape(b, l, -1)
        else:
            out = self.head(h)
        return out.astype(jnp.float32), h

    def attention_inputs(self, token_mask: jax.Array | None, length: int, batch: int, cache: dict | None,
                         slot_offset: int = 0) -> tuple[jax.Array, jax.Array, jax.Array | None, dict | None]:
        """Positions int32[B, L], mask bool[B, 1, L, S], ALiBi bias and the updated cache bookkeeping.

        slot_offset: slots before the cache's first one (a cached prefix of that many slots; only ALiBi,
        which biases by slot, needs it)."""
        c = self.config
        if token_mask is None:
            token_mask = jnp.ones((batch, length), bool)
        counts = jnp.cumsum(token_mask.astype(jnp.int32), axis=1)
        if cache is None:
            positions = jnp.maximum(counts - 1, 0)
            key_mask, slots, new_meta = token_mask, jnp.arange(length), None
            q_slots = slots
        else:
            positions = jnp.maximum(cache["next_position"][:, None] + counts - 1, 0)
            q_slots = cache["index"] + jnp.arange(length)
            key_mask = jax.lax.dynamic_update_slice(cache["key_mask"], token_mask, (0, cache["index"]))
            slots = jnp.arange(key_mask.shape[1])
            new_meta = dict(index=cache["index"] + length, key_mask=key_mask,
                            next_position=cache["next_position"] + counts[:, -1])
        causal = slots[None, :] <= q_slots[:, None]  # [L, S]
        mask = (causal[None] & key_mask[:, None, :])[:, None]
        bias = None
        if c.positions == "alibi":
            bias = alibi_bias(c.num_heads, jnp.broadcast_to(slots + slot_offset, key_mask.shape))
        return positions, mask, bias, new_meta

    def init_cache(self, batch: int, max_len: int, dtype: Dtype | None = None) -> dict:
        """An empty cache for `batch` rows and `max_len` slots."""
        c = self.config
        g = c.num_kv_heads or c.num_heads
        kv = jnp.zeros((batch, max_len, g, head_dim(c)), dtype or self.dtype)
        one = {"k": kv, "v": kv}
        layers = (jax.tree.map(lambda x: jnp.broadcast_to(x,
                                                          (c.num_layers, *x.shape)), one) if c.scan_layers else [one] *
                  c.num_layers)
        return dict(layers=layers, index=jnp.zeros((), jnp.int32), key_mask=jnp.zeros((batch, max_len), bool),
                    next_position=jnp.zeros((batch, ), jnp.int32))

    def run_layers(self, h: jax.Array, attn: dict, cache_layers=None, prefix: dict | None = None):
        """Applies every layer in order. attn: positions/mask/bias/cache_index. Returns (h, caches).

        prefix: a cached prompt prefix, {'layers': per-layer {'k', 'v'} like the cache's, 'mask', 'bias'}."""
        run = scan_blocks if self.config.scan_layers else loop_blocks
        return run(self.block(), h, self.layer_params, cache_layers, attn, prefix=prefix)

    def __call__(self, tokens: jax.Array, token_mask: jax.Array | None = None, cache: dict | None = None):
        """The LM alone. tokens: int32[B, L] -> (logits float32[B, L, V], new cache or None)."""
        b, l = tokens.shape
        positions, mask, bias, meta = self.attention_inputs(token_mask, l, b, cache)
        h = self.embed_tokens(tokens, positions)
        attn = dict(positions=positions, mask=mask, bias=bias, cache_index=None if cache is None else cache["index"])
        h, layers = self.run_layers(h, attn, None if cache is None else cache["layers"])
        logits, _ = self.logits(h)
        return logits, (None if cache is None else dict(meta, layers=layers))
