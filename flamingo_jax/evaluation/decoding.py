"""Decoding with the KV cache: greedy, beam search, and ranking candidate answers by log-likelihood.

All entry points take prompts already LEFT-padded to a fixed bucket length (token_mask False on padding)
and visual features computed ONCE per prompt (`Decoder.encode`); the visual tokens are reused by every
decoding step and every beam. Each (batch, prompt length, images, frames, generation settings) shape
compiles once.

Greedy decoding and beam search, and how hypotheses are scored: evaluation.search.

Caches. A prompt is prefilled once into a *prefix* (a dict, see Flamingo.decode): every LM layer's keys/values, the
key mask, the positions and image count, and the cross-attention keys/values of the visual tokens that the
tokens after the prompt may see (under the 'previous' mask only the last image's), projected ONCE per prompt
(Flamingo.visual_kv) and never again at a decode step. Beams and candidates do not copy the prefix: their
rows (contiguous per prompt) attend to the shared prefix plus a small cache of their own tokens
(models.attention.multi_part_attention), so beam search reorders only the generated tokens' cache. Few-shot
prompts that share their shots: prefill the shots once (`prefill`, P = 1) and `extend` it with each query's
own tokens and images; generate_from / rank_from then run on the result. Ranking scores the candidates in
chunks (lax.map) against the cached prefix, each candidate's last token never run (its output predicts
nothing). `rank` gives every prompt the same candidate list (yes/no, a class list); `rank_per_row` gives each
prompt its own (a VisDial round's or a STAR question's options); both are the same ranking of per-row
candidates [B, C, Lc] after one prefill.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from flamingo_jax.evaluation import search
from flamingo_jax.evaluation.search import NEG_INF, GenerationConfig  # noqa: F401  (decoding.GenerationConfig)


def bucket(n: int, minimum: int = 16) -> int:
    """The padded size for n: the next power of two >= max(n, minimum) (few distinct shapes, few compiles)."""
    size = minimum
    while size < n:
        size *= 2
    return size


def left_pad(rows: list[list[int]], length: int, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Token lists -> (int32[B, length] left-padded, bool[B, length] token_mask)."""
    tokens = np.full((len(rows), length), pad_id, np.int32)
    mask = np.zeros((len(rows), length), bool)
    for i, r in enumerate(rows):
        if len(r) > length:
            raise ValueError(f"prompt of {len(r)} tokens does not fit the bucket of {length}")
        if r:
            tokens[i, length - len(r):] = r
            mask[i, length - len(r):] = True
    return tokens, mask


def right_pad(rows: list[list[int]], length: int, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    tokens = np.full((len(rows), length), pad_id, np.int32)
    mask = np.zeros((len(rows), length), bool)
    for i, r in enumerate(rows):
        tokens[i, :len(r)] = r
        mask[i, :len(r)] = True
    return tokens, mask


def pad_candidate_rows(rows: list[list[list[int]]], count: int, length: int,
                       pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Each prompt row's own candidates (token lists) -> (int32[B, count, length] right-padded, bool[B, count,
    length] candidate_mask) for Decoder.rank_per_row. A row with fewer than `count` candidates repeats its last
    one (a real candidate, so every slot scores finitely; the caller drops the repeats' scores)."""
    tokens = np.full((len(rows), count, length), pad_id, np.int32)
    mask = np.zeros((len(rows), count, length), bool)
    for i, cands in enumerate(rows):
        if not cands or len(cands) > count:
            raise ValueError(f"row {i} has {len(cands)} candidates; rank_per_row pads them to {count}")
        tokens[i], mask[i] = right_pad(cands + [cands[-1]] * (count - len(cands)), length, pad_id)
    return tokens, mask


def _batch_axes(model: nn.Module, params: Any, max_len: int) -> Any:
    """For every cache leaf, its batch axis (None for leaves without one), found by comparing shapes."""

    def shapes(b):
        return jax.eval_shape(lambda p: model.apply({"params": p}, b, max_len, method="init_cache"), params)

    def axis(a, b):
        diff = [i for i, (x, y) in enumerate(zip(a.shape, b.shape)) if x != y]
        return diff[0] if diff else None

    return jax.tree.map(axis, shapes(2), shapes(3))


def _map_batch(cache, axes, fn):
    """Applies fn(x, axis) to the leaves with a batch axis."""
    return jax.tree.map(lambda x, a: x if a is None else fn(x, a), cache, axes)


class Decoder:
    """Jitted encode / generate / rank for one Flamingo model (params are an argument, not captured).

    model: the Flamingo module (flamingo_jax.models.build(config.model)). pad_id pads prompts and finished
    rows; it is never attended to (token_mask).

    On a mesh (`mesh` and the params' `param_shardings`, e.g. flamingo_jax.sharding.tree_shardings): every
    function is jitted with explicit in and out shardings, params as given, the batch (prompts, images,
    visual tokens, results) split over the (data, fsdp) axes, the KV cache constrained to the same batch split,
    rank's shared candidates replicated and rank_per_row's per-row candidates split like the prompts. Host
    inputs move by explicit jax.device_put into those shardings and results come back by the caller's
    jax.device_get, so decoding runs under JAX_TRANSFER_GUARD=disallow. Batch sizes must divide data * fsdp.
    Without a mesh: one device, the arrays' default placement. (prefill / extend / generate_from / rank_from are
    jitted without explicit shardings: their prefix arrays stay where the previous call put them.)

    rank_chunk: candidates scored per batch in rank / rank_from / rank_per_row (rows = prompts x rank_chunk)."""

    def __init__(self, model: nn.Module, pad_id: int = 0, mesh: Any = None, param_shardings: Any = None,
                 rank_chunk: int = 128):
        self.model = model
        self.pad_id = pad_id
        self.mesh = mesh
        self.rank_chunk = rank_chunk
        vision = lambda p, x: model.apply({"params": p}, x, method=lambda m, x: m.vision(x))  # noqa: E731
        pooled = lambda p, x: vision(p, x).astype(jnp.float32).mean(axis=1)  # noqa: E731
        encode = lambda p, images: model.apply({"params": p}, images, method="encode")  # noqa: E731
        self._prefill_j = jax.jit(self._prefill)
        self._extend_j = jax.jit(self._extend)
        self._generate_from_j = jax.jit(self._generate_from, static_argnums=2)
        self._rank_from_j = jax.jit(self._rank_shared)
        if mesh is None:
            self._encode = jax.jit(encode)
            self._generate = jax.jit(self._generate_positional, static_argnums=5)
            self._rank = jax.jit(self._rank_impl)
            self._rank_per_row = jax.jit(self._rank_per_row_impl)
            self._vision = jax.jit(pooled)
            return
        if param_shardings is None:
            raise ValueError("a Decoder on a mesh needs the params' shardings (param_shardings)")
        from flamingo_jax import sharding

        b = lambda ndim: sharding.batch_sharding(mesh, ndim)  # noqa: E731
        rep = sharding.replicated(mesh)
        ps = param_shardings
        self._encode = jax.jit(encode, in_shardings=(ps, b(6)), out_shardings=b(4))
        self._generate = jax.jit(self._generate_positional, static_argnums=5, in_shardings=(ps, b(2), b(2), b(4), b(2)),
                                 out_shardings=dict(tokens=b(3), scores=b(2), lengths=b(2)))
        self._rank = jax.jit(self._rank_impl, in_shardings=(ps, b(2), b(2), b(4), b(2), rep, rep, rep, rep),
                             out_shardings=b(2))
        self._rank_per_row = jax.jit(self._rank_per_row_impl, in_shardings=(ps, b(2), b(2), b(4), b(2), b(3), b(3)),
                                     out_shardings=b(2))
        self._vision = jax.jit(pooled, in_shardings=(ps, b(4)), out_shardings=b(2))

    def _put(self, x, ndim: int | None = None):
        """An explicit host -> device transfer: batch-split (ndim given) or replicated on the mesh, the default
        device without one; device arrays stay where they are."""
        if isinstance(x, jax.Array):
            return x
        x = np.asarray(x)
        if self.mesh is None:
            return jax.device_put(x)
        from flamingo_jax import sharding

        return jax.device_put(x, sharding.batch_sharding(self.mesh, x.ndim) if ndim else sharding.replicated(self.mesh))

    def _constrain(self, cache, axes):
        """The KV cache split over (data, fsdp) along each leaf's batch axis (on a mesh, where it divides)."""
        if self.mesh is None:
            return cache
        from jax.sharding import NamedSharding, PartitionSpec as P
        from flamingo_jax import sharding

        n = self.mesh.shape["data"] * self.mesh.shape["fsdp"]

        def one(x, a):
            if x.shape[a] % n:
                return x
            spec = P(*[sharding.BATCH_AXES if i == a else None for i in range(x.ndim)])
            return jax.lax.with_sharding_constraint(x, NamedSharding(self.mesh, spec))

        return _map_batch(cache, axes, one)

    # ------------------------------------------------------------------ public
    def encode(self, params, images: jax.Array) -> jax.Array:
        """images float32[B, T, F, H, W, C] -> visual [B, T, K, D] (once per prompt)."""
        return self._encode(params, self._put(images, 6))

    def vision_features(self, params, images: jax.Array) -> jax.Array:
        """Frozen vision-encoder features, mean-pooled over tokens: float32[N, H, W, C] -> [N, Dv] (RICES)."""
        return self._vision(params, self._put(images, 4))

    def generate(self, params, tokens, token_mask, visual, image_mask, gen: GenerationConfig) -> dict:
        """Left-padded prompts int32[B, L] -> {'tokens': int32[B, K, N], 'scores': f32[B, K] (best first),
        'lengths': int32[B, K]} with K = gen.num_beams (1 for greedy) and N = gen.max_new_tokens; scores
        are the length-normalised log-likelihoods (see the module docstring); tokens past a hypothesis'
        length are pad_id (the stop token is included in the length)."""
        return self._generate(params, self._put(tokens, 2), self._put(token_mask, 2), self._put(visual, 4),
                              self._put(image_mask, 2), gen)

    def rank(self, params, tokens, token_mask, visual, image_mask, candidates, candidate_mask) -> jax.Array:
        """Log-likelihood float32[B, C] of each candidate continuation int32[C, Lc] (right-padded,
        candidate_mask) after each left-padded prompt int32[B, L]: one prefill, then the candidates in
        chunks of rank_chunk, each chunk one batched forward on the cached prompt (not copied per candidate)."""
        firsts, inverse = self._first_tokens(candidates)
        return self._rank(params, self._put(tokens, 2), self._put(token_mask, 2), self._put(visual, 4),
                          self._put(image_mask, 2), self._put(candidates), self._put(candidate_mask), self._put(firsts),
                          self._put(inverse))

    def rank_per_row(self, params, tokens, token_mask, visual, image_mask, candidates, candidate_mask) -> jax.Array:
        """rank() with each prompt its own candidates: int32[B, C, Lc] (right-padded, candidate_mask bool[B, C,
        Lc]; pad_candidate_rows pads rows with fewer to C) after left-padded prompts int32[B, L] -> log-likelihoods
        float32[B, C]. On a mesh the candidates are split over the batch like the prompts, so a mesh spanning
        processes ranks every process's own rows (and their own options) in one collective call."""
        return self._rank_per_row(params, self._put(tokens, 2), self._put(token_mask, 2), self._put(visual, 4),
                                  self._put(image_mask, 2), self._put(candidates, 3), self._put(candidate_mask, 3))

    def prefill(self, params, tokens, token_mask, visual, image_mask) -> dict:
        """Runs left-padded prompts int32[P, L] (visual [P, T, K, D]) once -> their prefix (a dict pytree, see
        Flamingo.decode) with 'logp' float32[P, V], the next token's log-probabilities."""
        return self._prefill_j(params, self._put(tokens, 2), self._put(token_mask, 2), self._put(visual, 4),
                               self._put(image_mask, 2))

    def extend(self, params, prefix: dict, tokens, token_mask, visual, image_mask) -> dict:
        """A prefix of P prompts (e.g. the shots, P = 1) continued by N = R * P rows int32[N, L] (left-padded;
        row r continues prompt r // R; visual [N, T, K, D]: each row's own images, numbered after the
        prefix's) -> the prefix of the N longer prompts. The shared part was run once, not N times."""
        return self._extend_j(params, prefix, self._put(tokens, 2), self._put(token_mask, 2), self._put(visual, 4),
                              self._put(image_mask, 2))

    def generate_from(self, params, prefix: dict, gen: GenerationConfig) -> dict:
        """generate() continuing a prefix (prefill / extend)."""
        return self._generate_from_j(params, prefix, gen)

    def rank_from(self, params, prefix: dict, candidates, candidate_mask) -> jax.Array:
        """rank() of the candidates after a prefix (prefill / extend): float32[P, C]."""
        firsts, inverse = self._first_tokens(candidates)
        return self._rank_from_j(params, prefix, self._put(candidates), self._put(candidate_mask), self._put(firsts),
                                 self._put(inverse))

    @staticmethod
    def _first_tokens(candidates) -> tuple[np.ndarray, np.ndarray]:
        """The candidates' distinct first tokens int32[U] (padded to a multiple of 32 by repeating one, so few
        shapes compile) and each candidate's index among them int32[C]: candidates sharing a first token
        share its forward pass (about 440 of 1000 random 3-token names over a 512-token vocabulary)."""
        first = np.asarray(jax.device_get(candidates))[:, 0]
        firsts, inverse = np.unique(first, return_inverse=True)
        firsts = np.concatenate([firsts, np.full(-len(firsts) % 32, firsts[0])])
        return firsts.astype(np.int32), inverse.astype(np.int32)

    # ------------------------------------------------------------------ internals
    def _apply(self, params, *args, **kwargs):
        return self.model.apply({"params": params}, *args, **kwargs)

    def _no_images(self, prefix: dict, rows: int):
        """(visual, image_mask, visual_kv) of rows that bring no images of their own: zero-size arrays (the
        continuations see only the prefix's cached visual keys/values)."""
        x, _, m, h, dh = prefix["xkv"]["k"].shape
        empty = jnp.zeros((x, rows, 0, h, dh), prefix["xkv"]["k"].dtype)
        return jnp.zeros((rows, 0, 1, 1)), jnp.zeros((rows, 0), bool), dict(k=empty, v=empty)

    def _visible(self, count, image_mask, k):
        """Which of a prompt's own images (numbered 1..T) tokens after it see: bool[B, T*K]; under the
        'previous' mask the last <image>'s, under 'all_previous' every one up to the count."""
        num = jnp.arange(1, image_mask.shape[1] + 1)[None]
        sel = num == count[:, None] if self.model.config.xattn.mask == "previous" else num <= count[:, None]
        return jnp.repeat(sel & image_mask, k, axis=1)

    def _last_image_kv(self, vkv, count, k):
        """vkv {'k','v': [X, B, T*K, H, Dh]} -> the last <image>'s keys/values [X, B, K, H, Dh] (count: [B])."""

        def one(a):
            x, b, tk, h, dh = a.shape
            a = a.reshape(x, b, tk // k, k, h, dh)
            last = jnp.clip(count - 1, 0, tk // k - 1)
            return jnp.take_along_axis(a, last[None, :, None, None, None, None], axis=2)[:, :, 0]

        return jax.tree.map(one, vkv)

    def _own_cache(self, params, prefix: dict, rows: int, length: int) -> dict:
        """An empty cache for `rows` continuations (rows // P per prompt) of `length` tokens, starting at the
        prefix's positions and image counts."""
        r = rows // prefix["media_count"].shape[0]
        cache = self._apply(params, rows, length, method="init_cache")
        cache["lm"]["next_position"] = jnp.repeat(prefix["lm"]["next_position"], r)
        cache["media_count"] = jnp.repeat(prefix["media_count"], r)
        if self.mesh is not None:
            cache = self._constrain(cache, _batch_axes(self.model, params, length))
        return cache

    def _prefill(self, params, tokens, token_mask, visual, image_mask) -> dict:
        b, l = tokens.shape
        k = visual.shape[2]
        vkv = self._apply(params, visual, method="visual_kv")  # projected once for the whole prompt
        cache = self._apply(params, b, l, method="init_cache")
        if self.mesh is not None:
            cache = self._constrain(cache, _batch_axes(self.model, params, l))
        logits, cache = self._apply(params, tokens, visual, image_mask, None, token_mask, cache, visual_kv=vkv,
                                    last_logits=True, method="decode")
        count = cache["media_count"]
        visible = self._visible(count, image_mask, k)
        if self.model.config.xattn.mask == "previous":  # later tokens see one image: keep only its keys
            xkv, xmask = self._last_image_kv(vkv, count, k), visible.reshape(b, -1, k).any(axis=1)
            xmask = jnp.broadcast_to(xmask, (b, k)) & (count > 0)[:, None]
        else:
            xkv, xmask = vkv, visible
        return dict(
            lm=dict(layers=cache["lm"]["layers"], key_mask=cache["lm"]["key_mask"],
                    next_position=cache["lm"]["next_position"]), graft=cache["graft"], media_count=count, xkv=xkv,
            xmask=xmask, logp=jax.nn.log_softmax(logits[:, -1]))

    def _extend(self, params, prefix, tokens, token_mask, visual, image_mask) -> dict:
        n, l = tokens.shape
        k = visual.shape[2]
        r = n // prefix["media_count"].shape[0]
        vkv = self._apply(params, visual, method="visual_kv")
        cache = self._own_cache(params, prefix, n, l)
        logits, cache = self._apply(params, tokens, visual, image_mask, None, token_mask, cache, prefix=prefix,
                                    visual_kv=vkv, last_logits=True, method="decode")
        scan = self.model.config.lm.scan_layers
        rep = lambda x, axis=0: jnp.repeat(x, r, axis=axis)  # noqa: E731

        def join(old, new):  # per-layer keys/values: the prefix's slots, then the rows' own
            return jax.tree.map(lambda a, b: jnp.concatenate([rep(a, int(scan)), b], axis=1 + int(scan)), old, new)

        own = cache["media_count"] - rep(prefix["media_count"])  # images in the rows' own tokens
        visible = self._visible(own, image_mask, k)
        old_xkv = jax.tree.map(lambda a: rep(a, 1), prefix["xkv"])
        if self.model.config.xattn.mask == "previous":  # the last image: the rows' own if they have one
            has = own > 0
            mine = self._last_image_kv(vkv, own, k) if visual.shape[1] else old_xkv
            xkv = jax.tree.map(lambda a, b: jnp.where(has[None, :, None, None, None], a, b), mine, old_xkv)
            xmask = jnp.where(has[:, None], jnp.broadcast_to(visible.reshape(n, -1, k).any(1), (n, k)),
                              rep(prefix["xmask"]))
        else:
            xkv = jax.tree.map(lambda a, b: jnp.concatenate([a, b], axis=2), old_xkv, vkv)
            xmask = jnp.concatenate([rep(prefix["xmask"]), visible], axis=1)
        graft = None if cache["graft"] is None else join(prefix["graft"], cache["graft"])
        return dict(
            lm=dict(layers=join(prefix["lm"]["layers"], cache["lm"]["layers"]),
                    key_mask=jnp.concatenate([rep(prefix["lm"]["key_mask"]), cache["lm"]["key_mask"]],
                                             1), next_position=cache["lm"]["next_position"]), graft=graft,
            media_count=cache["media_count"], xkv=xkv, xmask=xmask, logp=jax.nn.log_softmax(logits[:, -1]))

    def _step(self, params, prefix, tok, cache, banned):
        """One new token per row int32[N] on the prefix and the rows' own cache -> (logp [N, V], cache)."""
        n = tok.shape[0]
        visual, image_mask, vkv = self._no_images(prefix, n)
        logits, cache = self._apply(params, tok[:, None], visual, image_mask, None, jnp.ones((n, 1), bool), cache,
                                    prefix=prefix, visual_kv=vkv, method="decode")
        return jnp.where(banned, NEG_INF, jax.nn.log_softmax(logits[:, -1].astype(jnp.float32))), cache

    def _generate_positional(self, params, tokens, token_mask, visual, image_mask, gen: GenerationConfig):
        prefix = self._prefill(params, tokens, token_mask, visual, image_mask)
        return self._generate_from(params, prefix, gen)

    def _generate_from(self, params, prefix, gen: GenerationConfig):
        logp = prefix["logp"].astype(jnp.float32)
        vocab = logp.shape[-1]
        banned = search.token_set(gen.banned_ids, vocab)
        stop = search.token_set(gen.stop_ids, vocab)
        logp = jnp.where(banned, NEG_INF, logp)
        n = gen.max_new_tokens
        step = lambda tok, cache: self._step(params, prefix, tok, cache, banned)  # noqa: E731
        if gen.num_beams == 1:
            return search.greedy(step, logp, self._own_cache(params, prefix, logp.shape[0], n), gen, stop, self.pad_id)
        # Beam j of prompt i is row i*k + j: the prompt's prefix is shared, only the beams' own tokens are cached
        # per row (and reordered when beams swap parents).
        cache = self._own_cache(params, prefix, logp.shape[0] * gen.num_beams, n)
        axes = _batch_axes(self.model, params, n)
        reorder = lambda cache, rows: _map_batch(cache, axes, lambda x, a: jnp.take(x, rows, axis=a))  # noqa: E731
        return search.beam_search(step, reorder, logp, cache, gen, stop, self.pad_id)

    def _rank_impl(self, params, tokens, token_mask, visual, image_mask, cands, cand_mask, firsts, inverse):
        prefix = self._prefill(params, tokens, token_mask, visual, image_mask)
        return self._rank_shared(params, prefix, cands, cand_mask, firsts, inverse)

    def _rank_shared(self, params, prefix, cands, cand_mask, firsts, inverse):
        """One candidate list int32[C, Lc] (firsts [U], inverse [C]) for every prompt of the prefix -> [P, C]."""
        p = prefix["logp"].shape[0]
        rows = lambda x: jnp.broadcast_to(x, (p, *x.shape))  # noqa: E731
        return self._rank_candidates(params, prefix, rows(cands), rows(cand_mask), rows(firsts), rows(inverse))

    def _rank_per_row_impl(self, params, tokens, token_mask, visual, image_mask, cands, cand_mask):
        """Each row's candidates int32[B, C, Lc] -> [B, C]. Every candidate's first token gets a row of its own
        (U = C): sharing equal first tokens within a row would make U depend on the options, and every process of
        a collective call must know the shapes beforehand; the first token is one of the Lc - 1 run per candidate."""
        prefix = self._prefill(params, tokens, token_mask, visual, image_mask)
        inverse = jnp.broadcast_to(jnp.arange(cands.shape[1], dtype=jnp.int32), cands.shape[:2])
        return self._rank_candidates(params, prefix, cands, cand_mask, cands[:, :, 0], inverse)

    def _rank_candidates(self, params, prefix, cands, cand_mask, firsts, inverse):
        """Log-likelihoods [P, C] of each prompt's own candidates cands int32[P, C, Lc] (cand_mask bool[P, C, Lc]):
        token 0 from the prefix's next-token log-probs; token 1 from one forward of each prompt's first tokens
        (firsts int32[P, U]; inverse int32[P, C]: each candidate's index among them, so candidates sharing a first
        token share its forward pass); tokens 2.. from the candidates in chunks, their own cache seeded with their
        first token's keys/values. A candidate's last token never runs."""
        b, c, lc = cands.shape
        logp0 = prefix["logp"].astype(jnp.float32)
        total = jnp.take_along_axis(logp0, cands[:, :, 0], axis=1)  # [P, C]
        if lc == 1:
            return total
        u = firsts.shape[1]
        first_cache = self._own_cache(params, prefix, b * u, 1)
        logp1, first_cache = self._step(params, prefix, firsts.reshape(-1), first_cache, jnp.zeros((1, ), bool))
        parent = jnp.arange(b)[:, None] * u + inverse  # [P, C]: each candidate's first-token row
        second = logp1[parent.reshape(-1), cands[:, :, 1].reshape(-1)].reshape(b, c)
        total = total + jnp.where(cand_mask[:, :, 1], second, 0.0)
        if lc == 2:
            return total
        chunk = min(self.rank_chunk, c)
        pad = -c % chunk
        n_chunks = (c + pad) // chunk

        def chunks(x, value=0):  # [P, C, ...] -> [chunks, P, chunk, ...]
            x = jnp.pad(x, ((0, 0), (0, pad)) + ((0, 0), ) * (x.ndim - 2), constant_values=value)
            return x.reshape(b, n_chunks, chunk, *x.shape[2:]).swapaxes(0, 1)

        axes = _batch_axes(self.model, params, 1)

        def one(chunk_in):
            toks, mask, par = chunk_in  # [P, chunk, Lc], [P, chunk, Lc], [P, chunk]
            rows = toks.reshape(b * chunk, lc)  # row i*chunk + j = candidate j of prompt i
            rows_mask = mask.reshape(b * chunk, lc)
            seeded = _map_batch(first_cache, axes, lambda x, a: jnp.take(x, par.reshape(-1), axis=a))
            cache = _seed(self._own_cache(params, prefix, b * chunk, lc - 1), seeded)
            visual, image_mask, vkv = self._no_images(prefix, b * chunk)
            logits, _ = self._apply(params, rows[:, 1:-1], visual, image_mask, None, rows_mask[:, 1:-1], cache,
                                    prefix=prefix, visual_kv=vkv, method="decode")
            logp = jax.nn.log_softmax(logits.astype(jnp.float32))  # [P*chunk, Lc-2, V]: tokens 2 .. Lc-1
            rest = jnp.take_along_axis(logp, rows[:, 2:, None], axis=2)[..., 0]
            return jnp.sum(jnp.where(rows_mask[:, 2:], rest, 0.0), axis=1).reshape(b, chunk)

        scores = jax.lax.map(one, (chunks(cands, self.pad_id), chunks(cand_mask), chunks(parent)))  # [chunks, P, chunk]
        return total + scores.transpose(1, 0, 2).reshape(b, -1)[:, :c]


def _seed(cache: dict, first: dict) -> dict:
    """An own cache of S slots whose slot 0 holds `first` (a cache of the same rows with 1 slot written): leaves
    with a slot axis get first's values there, the others (write index, positions, image counts) are first's."""

    def one(x, y):
        if x.shape == y.shape:
            return y
        axis = next(i for i, (p, q) in enumerate(zip(x.shape, y.shape)) if p != q)
        return jax.lax.dynamic_update_slice_in_dim(x, y.astype(x.dtype), 0, axis=axis)

    return jax.tree.map(one, cache, first)


_DECODERS: dict[tuple[str, int], Decoder] = {}


def decoder_for(model: nn.Module, pad_id: int = 0, mesh: Any = None, param_shardings: Any = None) -> Decoder:
    """A shared Decoder per (model config, pad id, mesh and param shardings): its jitted functions (and
    compiles) are reused."""
    key = (model.config.to_json_best_effort(sort_keys=True), pad_id, mesh,
           None if param_shardings is None else tuple(jax.tree.leaves(param_shardings)))
    if key not in _DECODERS:
        _DECODERS[key] = Decoder(model, pad_id, mesh, param_shardings)
    return _DECODERS[key]
