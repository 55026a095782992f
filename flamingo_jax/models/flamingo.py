"""The Flamingo composite: frozen vision encoder -> resampler -> frozen LM interleaved with cross-attention.

Top-level param subtrees, so "trainable" is a choice of subtrees:
  vision      the vision encoder (frozen by default)
  resampler   the Perceiver (or MLP / Transformer) resampler (trainable)
  lm          the decoder LM (frozen by default)
  xattn       the cross-attention layers (trainable)
  new_tokens  learnt embedding (and, for untied heads, unembedding) rows of added tokens such as
              `<image>` and `<EOC>`, whose ids are lm.vocab_size ... lm.vocab_size + num_new_tokens - 1

Inputs: images float32[B, T_img, F, H, W, C] in [0, 1] (an image is a 1-frame video), image_mask
bool[B, T_img], tokens int32[B, L], optional media_index int32[B, L] (see xattn.py) and token_mask
bool[B, L] (False on left padding). Output: logits float32[B, L, vocab_size + num_new_tokens].

The order of the LM and cross-attention layers is data, schedule.layer_schedule's segments, which one
runner (`Flamingo._run_schedule`) applies for every kind, with per-layer or stacked params and with or
without a decoding cache.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from flamingo_jax.models.attention import alibi_bias
from flamingo_jax.models.layers import Dtype, dtype_of, logical
from flamingo_jax.models.lm import DecoderLM, loop_blocks, scan_blocks
from flamingo_jax.models.media_attention import OwnImageMask
from flamingo_jax.models.resampler import build_resampler, resampler_width
from flamingo_jax.models.schedule import Segment, layer_schedule
from flamingo_jax.models.vision import build_vision, vision_output_dim
from flamingo_jax.models.xattn import CrossAttentionStack, default_media_index, media_mask
from flamingo_jax.sharding import constrain


class NewTokens(nn.Module):
    """Learnt rows for added tokens: embedding [n, D]; unembedding [D, n] when the LM head is untied."""

    num_tokens: int
    d_model: int
    untied: bool
    param_dtype: Dtype = jnp.float32

    def setup(self):
        init = logical(nn.initializers.normal(0.02), ("vocab", "embed"))
        self.embedding = self.param("embedding", init, (self.num_tokens, self.d_model), self.param_dtype)
        if self.untied:
            out_init = logical(nn.initializers.normal(0.02), ("embed", "vocab"))
            self.unembedding = self.param("unembedding", out_init, (self.d_model, self.num_tokens), self.param_dtype)

    def output_rows(self) -> jax.Array:
        """[D, n] for the logits of the added tokens."""
        return self.unembedding if self.untied else self.embedding.T


REMAT_POLICIES = {
    "full": None,  # keep only each block's inputs; recompute everything else in the backward pass
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,  # keep matmul outputs
}


def _dynamic_rows(tree, start, size: int):
    return jax.tree.map(lambda x: jax.lax.dynamic_slice_in_dim(x, start, size, axis=0), tree)


def _layer(layers, j, stacked: bool):
    """Layer j's tree: row j (an int or a traced index) of a tree stacked on a leading layer axis, or item j
    of a list of per-layer trees."""
    return jax.tree.map(lambda a: a[0], _dynamic_rows(layers, j, 1)) if stacked else layers[j]


def _with_layer(layers, j, tree, stacked: bool):
    """`layers` with layer j's tree replaced by `tree` (see _layer)."""
    if stacked:
        return _set_rows(layers, jax.tree.map(lambda x: x[None], tree), j)
    return [*layers[:j], tree, *layers[j + 1:]]


def _set_rows(tree, part, start):
    return jax.tree.map(lambda x, p: jax.lax.dynamic_update_slice_in_dim(x, p, start, axis=0), tree, part)


class Flamingo(nn.Module):
    """See the module docstring. `config` is config.model (see flamingo_jax.models.model_config)."""

    config: ml_collections.ConfigDict

    def setup(self):
        c = self.config
        dtype = dtype_of(c.dtype)
        pd = {k: dtype_of(v) for k, v in c.param_dtype.items()}
        visual_dim = resampler_width(c.resampler, vision_output_dim(c.vision))
        self.vision = build_vision(c.vision, dtype, pd["vision"])
        self.resampler = build_resampler(c.resampler, dtype, pd["resampler"])
        self.lm = DecoderLM(c.lm, dtype=dtype, param_dtype=pd["lm"])
        self.xattn = CrossAttentionStack(c.xattn, d_model=c.lm.d_model, visual_dim=visual_dim,
                                         num_lm_layers=c.lm.num_layers, lm_heads=c.lm.num_heads,
                                         scan_layers=c.lm.scan_layers, dtype=dtype, param_dtype=pd["xattn"])
        self.new_tokens = NewTokens(c.num_new_tokens, c.lm.d_model, untied=not c.lm.tie_embeddings,
                                    param_dtype=pd["new_tokens"])

    # ---------------------------------------------------------------- vision side
    def encode(self, images: jax.Array) -> jax.Array:
        """images float32[B, T, F, H, W, C] -> visual tokens [B, T, num_latents, Dr]."""
        b, t, f, hh, ww, ch = images.shape
        # B-major flattening keeps each example's images on the devices that hold the example.
        flat = constrain(images.reshape(b * t * f, hh, ww, ch), ("act_batch", None, None, None))
        feats = constrain(self.vision(flat), ("act_batch", "act_length", "act_embed"))  # [B*T*F, S, Dv]
        feats = feats.reshape(b * t, f, *feats.shape[1:])
        latents = constrain(self.resampler(feats), ("act_batch", "act_latents", "act_embed"))  # [B*T, K, Dr]
        return latents.reshape(b, t, *latents.shape[1:])

    # ---------------------------------------------------------------- text side
    def init_cache(self, batch: int, max_len: int) -> dict:
        """An empty decoding cache for `batch` left-padded rows of up to `max_len` tokens."""
        dtype = dtype_of(self.config.dtype)
        return dict(lm=self.lm.init_cache(batch, max_len, dtype), graft=self.xattn.init_cache(batch, max_len, dtype),
                    media_count=jnp.zeros((batch, ), jnp.int32))

    def visual_kv(self, visual: jax.Array) -> dict:
        """visual [B, T, K, Dr] -> every cross-attention layer's keys and values of those visual tokens,
        {'k', 'v': [X, B, T*K, H, Dh]} for X layers: they are fixed for a prompt, so decoding projects them
        once (decode(visual_kv=...)) instead of at every step."""
        b, t, k, d = visual.shape
        flat = visual.reshape(b, t * k, d)
        block = self.xattn.block()
        kw = dict(self_mask=None) if self.config.xattn.kind == "grafting" else {}
        project = lambda p: block.apply({"params": p}, None, flat, None, kv_only=True, **kw)  # noqa: E731
        params = self.xattn.layer_params
        if not self.xattn.positions:
            h, hd = self.xattn.heads()
            empty = jnp.zeros((0, b, t * k, h, hd), dtype_of(self.config.dtype))
            return dict(k=empty, v=empty)
        if self.config.lm.scan_layers:
            kk, vv = jax.vmap(project)(params)
        else:
            kk, vv = zip(*[project(p) for p in params])
            kk, vv = jnp.stack(kk), jnp.stack(vv)
        return dict(k=kk, v=vv)

    def decode(self, tokens: jax.Array, visual: jax.Array, image_mask: jax.Array, media_index: jax.Array | None = None,
               token_mask: jax.Array | None = None, cache: dict | None = None, prefix: dict | None = None,
               visual_kv: dict | None = None, last_logits: bool = False) -> tuple[jax.Array, dict | None]:
        """tokens int32[B, L], visual [B, T, K, Dr], image_mask bool[B, T] -> (logits [B, L, V+n], cache).

        Decoding extras (flamingo_jax.evaluation.decoding):
          visual_kv    the visual tokens' cross-attention keys/values from visual_kv(visual), not re-projected
                       (visual then only gives the shapes; T may be 0: no new images)
          prefix       a cached prompt prefix for P = B / R prompts, row r continuing prompt r // R (its beams
                       or candidates): {'lm': {'layers', 'key_mask' [P, S]}, 'graft', 'media_count' [P],
                       'xkv': {'k', 'v': [X, P, M, H, Dh]} the prefix's visual keys/values that later tokens
                       may see, 'xmask' [P, M]}; `cache` then holds only the rows' own tokens and starts
                       from the prefix's positions and image count. The images of `visual` are numbered
                       after the prefix's.
          last_logits  logits of the last position only ([B, 1, V+n])."""
        c = self.config
        b, l = tokens.shape
        if media_index is None:
            media_index = default_media_index(tokens, c.image_token_id)
            if cache is not None:
                media_index = media_index + cache["media_count"][:, None]
        slot_offset = 0 if prefix is None else prefix["lm"]["key_mask"].shape[1]
        positions, self_mask, bias, meta = self.lm.attention_inputs(token_mask, l, b,
                                                                    None if cache is None else cache["lm"], slot_offset)
        t, k = visual.shape[1], visual.shape[2]
        visual_flat = constrain(visual.reshape(b, t * k, visual.shape[-1]), ("act_batch", "act_length", "act_embed"))
        dec = dict(xkv=visual_kv)
        if prefix is not None:
            dec.update(self._prefix_inputs(prefix, media_index))
            media_index = media_index - jnp.repeat(prefix["media_count"], b // prefix["media_count"].shape[0])[:, None]
        if c.xattn.mask == "previous" and prefix is None and OwnImageMask.applies(t, l):
            xmask = OwnImageMask(media_index, image_mask, k)  # each token scores its own image's keys only
        else:
            xmask = media_mask(media_index, image_mask, k, c.xattn.mask)
        h = constrain(self.lm.embed_tokens(tokens, positions, self.new_tokens.embedding),
                      ("act_batch", "act_length", "act_embed"))
        attn = dict(positions=positions, mask=self_mask, bias=bias,
                    cache_index=None if cache is None else cache["lm"]["index"])
        h, lm_layers, graft = self._run_schedule(h, visual_flat, xmask, attn,
                                                 None if cache is None else cache["lm"]["layers"],
                                                 None if cache is None else cache["graft"], dec)
        if last_logits:
            h, l = h[:, -1:], 1
        base, hn = self.lm.logits(constrain(h, ("act_batch", "act_length", "act_embed")))
        extra = jnp.dot(hn.reshape(b * l, -1), self.new_tokens.output_rows().astype(hn.dtype))
        logits = jnp.concatenate([base, extra.reshape(b, l, -1).astype(jnp.float32)], axis=-1)
        if cache is None:
            return logits, None
        if prefix is not None:  # back to image numbers counted from the prompt's start
            media_index = media_index + jnp.repeat(prefix["media_count"], b // prefix["media_count"].shape[0])[:, None]
        new_cache = dict(lm=dict(meta, layers=lm_layers), graft=graft, media_count=media_index[:, -1])
        return logits, new_cache

    def _prefix_inputs(self, prefix: dict, media_index: jax.Array) -> dict:
        """The masks with which rows [B, L] attend to a cached prefix of P = B / R prompts, laid out as
        multi_part_attention reads them ([P, 1, R*L, S]: a group's query rows flattened)."""
        c = self.config
        key_mask = prefix["lm"]["key_mask"]  # [P, S]
        p, s = key_mask.shape
        b, l = media_index.shape
        count = jnp.repeat(prefix["media_count"], b // p)  # [B]
        # Which of the prefix's visual tokens a token may see: under 'previous' the prefix's last image (xkv
        # holds only that image) while the token has seen no new <image>; under 'all_previous' all of them.
        sees = (count > 0)[:, None]
        if c.xattn.mask == "previous":
            sees = sees & (media_index == count[:, None])
        else:
            sees = jnp.broadcast_to(sees, (b, l))
        xmask = sees.reshape(p, 1, (b // p) * l, 1) & prefix["xmask"][:, None, None, :]
        bias = None
        if c.lm.positions == "alibi":
            bias = alibi_bias(c.lm.num_heads, jnp.arange(s)[None])  # [1, H, 1, S]: the prefix's slots
        mask = key_mask[:, None, None, :]
        return dict(lm_prefix=dict(layers=prefix["lm"]["layers"], mask=mask, bias=bias),
                    graft_prefix=None if prefix["graft"] is None else dict(layers=prefix["graft"], mask=mask),
                    xprefix=dict(prefix["xkv"], mask=xmask))

    def _xattn_extras(self, dec: dict | None, j) -> dict:
        """Keyword arguments of cross-attention layer j (int or traced) for decoding: its cached visual
        keys/values and its part of the cached prefix."""
        if not dec:
            return {}
        out = {}
        if dec.get("xkv") is not None:
            out["kv"] = (dec["xkv"]["k"][j], dec["xkv"]["v"][j])
        if dec.get("xprefix") is not None:
            xp = dec["xprefix"]
            out["prefix"] = dict(k=xp["k"][j], v=xp["v"][j], mask=xp["mask"])
        return out

    def __call__(self, tokens: jax.Array, images: jax.Array, image_mask: jax.Array,
                 media_index: jax.Array | None = None, token_mask: jax.Array | None = None) -> jax.Array:
        """Teacher-forced logits float32[B, L, V+n] (see the module docstring for the inputs)."""
        logits, _ = self.decode(tokens, self.encode(images), image_mask, media_index, token_mask)
        return logits

    # ---------------------------------------------------------------- layer schedules
    def _remat(self, fn):
        """fn under jax.checkpoint when config.remat asks for it (see model_config): the backward pass then
        recomputes the block's activations instead of keeping them. Off by default: recomputation costs time."""
        policy = self.config.get("remat", "none")
        if policy == "none":
            return fn
        if policy not in REMAT_POLICIES:
            raise ValueError(f"unknown model.remat {policy!r}: use 'none' or one of {sorted(REMAT_POLICIES)}")
        return jax.checkpoint(fn, policy=REMAT_POLICIES[policy])

    def _run_schedule(self, h, visual, xmask, attn, lm_layers, graft, dec):
        """Runs the layer schedule (schedule.layer_schedule) on the residual stream h [B, L, D].

        lm_layers, graft: the LM's and the grafted layers' self-attention caches (None without a cache).
        Per-layer params run each segment's layers in a Python loop, each layer under remat; stacked params
        run the LM layers with lax.scan, each segment under remat as a whole (one checkpoint per segment),
        and a Segment with `scan` as one lax.scan over its copies. Returns (h, lm_layers, graft)."""
        stacked = self.config.lm.scan_layers
        # Read before any lax.scan so that lazy setup (and, at init, param creation) never happens inside a
        # traced loop body.
        stacks = (self.lm.layer_params, self.xattn.layer_params)

        def run(state, seg: Segment, j, start):
            size = seg.stop - seg.start
            unit = functools.partial(self._run_segment, visual=visual, xmask=xmask, attn=attn, stacks=stacks, dec=dec,
                                     j=j, start=start, size=size, layer_remat=seg.remat and not stacked)
            return self._remat(unit)(state) if seg.remat and stacked else unit(state)

        state = (h, lm_layers, graft)
        for seg in layer_schedule(self.config.xattn, self.config.lm.num_layers, stacked):
            if seg.scan:
                size = seg.stop - seg.start

                def group(carry, k, seg=seg, size=size):
                    return run(carry, seg, seg.xattn + k, seg.start + k * size), None

                state, _ = jax.lax.scan(group, state, jnp.arange(seg.scan))
            else:
                state = run(state, seg, seg.xattn, seg.start)
        return state

    def _run_segment(self, state, *, visual, xmask, attn, stacks, dec, j, start, size, layer_remat):
        """Cross-attention layer j (None: none; an int or, inside a scan, a traced index), then LM layers
        [start, start + size). state: (h, lm_layers, graft) -> the same after the segment."""
        h, lm_layers, graft = state
        lm_params, xattn_params = stacks
        stacked = self.config.lm.scan_layers
        kind = self.config.xattn.kind
        wrap = self._remat if layer_remat else (lambda fn: fn)
        mid = None
        if j is not None:
            x_block = self.xattn.block()
            x_params = _layer(xattn_params, j, stacked)
            extras = self._xattn_extras(dec, j)
            if kind == "grafting":
                gp = (dec or {}).get("graft_prefix")
                self_prefix = None
                if gp is not None:
                    self_prefix = dict(_layer(gp["layers"], j, stacked), mask=gp["mask"], bias=None)
                cache = None if graft is None else _layer(graft, j, stacked)
                apply = functools.partial(x_block.apply, {"params": x_params}, visual=visual, mask=xmask, cache=cache,
                                          self_prefix=self_prefix, self_mask=attn["mask"],
                                          cache_index=attn["cache_index"], **extras)
                h, cache = wrap(apply)(h)
                if graft is not None:
                    graft = _with_layer(graft, j, cache, stacked)
            else:
                fn = lambda y: x_block.apply({"params": x_params}, y, visual, xmask, **extras)  # noqa: E731
                if kind == "vanilla":  # inside the first LM block, under that block's remat
                    mid = fn
                else:
                    h = wrap(fn)(h)
        if size == 0:
            return h, lm_layers, graft
        stop = start + size
        lm_prefix = (dec or {}).get("lm_prefix")
        lm_block = self.lm.block()
        if stacked:
            caches = None if lm_layers is None else _dynamic_rows(lm_layers, start, size)
            if lm_prefix is not None:
                lm_prefix = dict(lm_prefix, layers=_dynamic_rows(lm_prefix["layers"], start, size))
            h, caches = scan_blocks(lm_block, h, _dynamic_rows(lm_params, start, size), caches, attn, mid=mid,
                                    prefix=lm_prefix)
            if lm_layers is not None:
                lm_layers = _set_rows(lm_layers, caches, start)
            return h, lm_layers, graft
        if lm_prefix is not None:
            lm_prefix = dict(lm_prefix, layers=lm_prefix["layers"][start:stop])
        caches = None if lm_layers is None else lm_layers[start:stop]
        h, caches = loop_blocks(lm_block, h, lm_params[start:stop], caches, attn, mid=mid, prefix=lm_prefix, wrap=wrap)
        if lm_layers is not None:
            lm_layers = [*lm_layers[:start], *caches, *lm_layers[stop:]]
        return h, lm_layers, graft


def zeros_gates(params):
    """A copy of Flamingo params with every tanh gate set to zero (for tests and initial checks)."""

    def fix(path, x):
        return jnp.zeros_like(x) if str(path[-1].key).endswith("_gate") else x

    return jax.tree_util.tree_map_with_path(fix, params)
