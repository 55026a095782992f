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
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from flamingo_jax.models.attention import alibi_bias
from flamingo_jax.models.layers import Dtype, dtype_of, logical
from flamingo_jax.models.lm import DecoderLM
from flamingo_jax.models.media_attention import OwnImageMask
from flamingo_jax.models.resampler import build_resampler, resampler_width
from flamingo_jax.models.vision import build_vision, vision_output_dim
from flamingo_jax.models.xattn import CrossAttentionStack, default_media_index, media_mask, placement
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


def _uniform_groups(positions: tuple[int, ...], num_layers: int) -> int | None:
    """The common distance between cross-attention layers if they are evenly spaced, else None."""
    if len(positions) < 2:
        return None
    gaps = {b - a for a, b in zip(positions, positions[1:])}
    return gaps.pop() if len(gaps) == 1 else None


REMAT_POLICIES = {
    "full": None,  # keep only each block's inputs; recompute everything else in the backward pass
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,  # keep matmul outputs
}


def _dynamic_rows(tree, start, size: int):
    return jax.tree.map(lambda x: jax.lax.dynamic_slice_in_dim(x, start, size, axis=0), tree)


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
        lm_layers = None if cache is None else cache["lm"]["layers"]
        graft = None if cache is None else cache["graft"]
        if c.xattn.kind == "grafting":
            h, lm_layers = self.lm.run_layers(h, attn, lm_layers, prefix=dec.get("lm_prefix"))
            h, graft = self._run_grafts(h, visual_flat, xmask, self_mask, attn["cache_index"], graft, dec)
        elif c.lm.scan_layers:
            h, lm_layers = self._run_scanned(h, visual_flat, xmask, attn, lm_layers, dec)
        else:
            h, lm_layers = self._run_unrolled(h, visual_flat, xmask, attn, lm_layers, dec)
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

    def _xattn_fn(self, params, visual, xmask, remat: bool = True, extras: dict | None = None):
        block = self.xattn.block()
        fn = lambda h: block.apply({"params": params}, h, visual, xmask, **(extras or {}))  # noqa: E731
        return self._remat(fn) if remat else fn

    def _run_unrolled(self, h, visual, xmask, attn, lm_layers, dec=None):
        """Per-layer params: a Python loop, cross-attention before (gated) or inside (vanilla) LM blocks."""
        where = {layer: j for j, layer in enumerate(placement(self.config.xattn, self.config.lm.num_layers))}
        vanilla = self.config.xattn.kind == "vanilla"
        block = self.lm.block()
        new_layers = None if lm_layers is None else list(lm_layers)
        for i in range(self.config.lm.num_layers):
            mid = None
            if i in where:
                # Vanilla: inside the LM block, which is rematted as a whole (remat it once, not twice).
                x = self._xattn_fn(self.xattn.layer_params[where[i]], visual, xmask, remat=not vanilla,
                                   extras=self._xattn_extras(dec, where[i]))
                if vanilla:
                    mid = x
                else:
                    h = x(h)
            lm_prefix = (dec or {}).get("lm_prefix")
            layer_prefix = None if lm_prefix is None else dict(lm_prefix["layers"][i], mask=lm_prefix["mask"],
                                                               bias=lm_prefix["bias"])
            apply_block = functools.partial(block.apply, {"params": self.lm.layer_params[i]}, mid=mid,
                                            cache=None if new_layers is None else new_layers[i], prefix=layer_prefix,
                                            **attn)
            h, layer_cache = self._remat(apply_block)(h)
            if new_layers is not None:
                new_layers[i] = layer_cache
        return h, new_layers

    def _scan_lm(self, h, params, caches, attn, mid=None, prefix=None):
        """Applies the LM layers stacked in `params` (and their caches) in order with lax.scan.

        prefix: {'layers': the layers' stacked prefix keys/values, 'mask', 'bias'} (decoding) or None."""
        block = self.lm.block()
        n = jax.tree.leaves(params)[0].shape[0]
        kvs = None if prefix is None else prefix["layers"]

        def layer_prefix(kv):
            return None if kv is None else dict(kv, mask=prefix["mask"], bias=prefix["bias"])

        if mid is not None:  # the first layer of the group holds the vanilla cross-attention
            first = jax.tree.map(lambda x: x[0], params)
            first_cache = None if caches is None else jax.tree.map(lambda x: x[0], caches)
            first_kv = None if kvs is None else jax.tree.map(lambda x: x[0], kvs)
            h, c0 = block.apply({"params": first}, h, mid=mid, cache=first_cache, prefix=layer_prefix(first_kv), **attn)
            if n == 1:
                return h, None if caches is None else jax.tree.map(lambda x: x[None], c0)
            rest = jax.tree.map(lambda x: x[1:], params)
            rest_cache = None if caches is None else jax.tree.map(lambda x: x[1:], caches)
            rest_prefix = None if kvs is None else dict(prefix, layers=jax.tree.map(lambda x: x[1:], kvs))
            h, cr = self._scan_lm(h, rest, rest_cache, attn, prefix=rest_prefix)
            if caches is None:
                return h, None
            return h, jax.tree.map(lambda a, r: jnp.concatenate([a[None], r]), c0, cr)

        def body(carry, xs):
            p, layer_cache, kv = xs
            return block.apply({"params": p}, carry, cache=layer_cache, prefix=layer_prefix(kv), **attn)

        return jax.lax.scan(body, h, (params, caches, kvs))

    def _run_segment(self, h, j, start, size, visual, xmask, attn, lm_layers, stacks, dec=None):
        """Cross-attention layer j (if any), then LM layers [start, start+size) from the stacked trees.

        stacks: (lm params, xattn params), read before any lax.scan so that lazy setup (and, at init,
        param creation) never happens inside a traced loop body."""
        lm_params, xattn_params = stacks
        x = None
        if j is not None:
            params_j = jax.tree.map(lambda a: a[0], _dynamic_rows(xattn_params, j, 1))
            x = self._xattn_fn(
                params_j,
                visual,
                xmask,
                remat=False,  # the caller remats the whole segment
                extras=self._xattn_extras(dec, j))
        vanilla = self.config.xattn.kind == "vanilla"
        if x is not None and not vanilla:
            h = x(h)
        if size == 0:
            return h, lm_layers
        params = _dynamic_rows(lm_params, start, size)
        caches = None if lm_layers is None else _dynamic_rows(lm_layers, start, size)
        lm_prefix = (dec or {}).get("lm_prefix")
        if lm_prefix is not None:
            lm_prefix = dict(lm_prefix, layers=_dynamic_rows(lm_prefix["layers"], start, size))
        h, caches = self._scan_lm(h, params, caches, attn, mid=x if vanilla else None, prefix=lm_prefix)
        if lm_layers is not None:
            lm_layers = _set_rows(lm_layers, caches, start)
        return h, lm_layers

    def _run_scanned(self, h, visual, xmask, attn, lm_layers, dec=None):
        """Stacked params: evenly spaced cross-attention layers run as one scan over (xattn, n LM blocks)
        groups, so compile time does not grow with depth; uneven placements run segment by segment."""
        num_layers = self.config.lm.num_layers
        pos = placement(self.config.xattn, num_layers)
        stacks = (self.lm.layer_params, self.xattn.layer_params)

        def segment(h_, layers_, j, start, size):  # under remat as a whole (one checkpoint per group)
            run = lambda carry: self._run_segment(
                carry[0],
                j,
                start,
                size,
                visual,
                xmask,
                attn,
                carry[1],  # noqa: E731
                stacks,
                dec)
            return self._remat(run)((h_, layers_))

        if not pos:
            return segment(h, lm_layers, None, 0, num_layers)
        h, lm_layers = segment(h, lm_layers, None, 0, pos[0])
        stride = _uniform_groups(pos, num_layers)
        first_plain = 0
        if stride is not None:
            full = len(pos) if pos[-1] + stride <= num_layers else len(pos) - 1

            def group(carry, j):
                return segment(carry[0], carry[1], j, pos[0] + j * stride, stride), None

            (h, lm_layers), _ = jax.lax.scan(group, (h, lm_layers), jnp.arange(full))
            first_plain = full
        for j in range(first_plain, len(pos)):
            stop = pos[j + 1] if j + 1 < len(pos) else num_layers
            h, lm_layers = segment(h, lm_layers, j, pos[j], stop - pos[j])
        return h, lm_layers

    def _run_grafts(self, h, visual, xmask, self_mask, cache_index, graft, dec=None):
        """GRAFTING: the new layers run after the whole frozen LM stack."""
        block = self.xattn.block()
        kw = dict(self_mask=self_mask, cache_index=cache_index)
        params = self.xattn.layer_params
        gp = (dec or {}).get("graft_prefix")

        def self_prefix(kv):
            return None if kv is None else dict(kv, mask=gp["mask"], bias=None)

        if not self.config.lm.scan_layers:
            new = None if graft is None else list(graft)
            for j, p in enumerate(params):
                apply_block = functools.partial(block.apply, {"params": p}, visual=visual, mask=xmask,
                                                cache=None if new is None else new[j],
                                                self_prefix=None if gp is None else self_prefix(gp["layers"][j]),
                                                **self._xattn_extras(dec, j), **kw)
                h, cj = self._remat(apply_block)(h)
                if new is not None:
                    new[j] = cj
            return h, new

        def body(carry, xs):
            p, cj, j, kv = xs
            extras = self._xattn_extras(dec, j)
            return self._remat(lambda h_: block.apply({"params": p}, h_, visual, xmask, cache=cj, self_prefix=
                                                      self_prefix(kv), **extras, **kw))(carry)

        return jax.lax.scan(
            body, h, (params, graft, jnp.arange(len(self.xattn.positions)), None if gp is None else gp["layers"]))


def zeros_gates(params):
    """A copy of Flamingo params with every tanh gate set to zero (for tests and initial checks)."""

    def fix(path, x):
        return jnp.zeros_like(x) if str(path[-1].key).endswith("_gate") else x

    return jax.tree_util.tree_map_with_path(fix, params)
