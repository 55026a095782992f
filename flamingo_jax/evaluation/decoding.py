"""Decoding with the KV cache: greedy, beam search, and ranking candidate answers by log-likelihood.

All entry points take prompts already LEFT-padded to a fixed bucket length (token_mask False on padding)
and visual features computed ONCE per prompt (`Decoder.encode`); the visual tokens are reused by every
decoding step and every beam. Each (batch, prompt length, images, frames, generation settings) shape
compiles once.

Scores. A hypothesis' log-likelihood is the sum of log p(token) over its generated tokens, the stop token
included, with log p from a log-softmax over the FULL vocabulary (banned tokens, by default `<image>`, then
get -inf: no renormalisation, as HuggingFace's logits processors). Beam search ranks finished hypotheses by
sum / length ** length_penalty where length counts generated tokens including the stop token; the default
length_penalty 0 ranks by the plain sum (OpenFlamingo's evaluation setting). A hypothesis finishes at the
first stop token (`<EOC>`, EOS) or after max_new_tokens tokens.

Beam search (num_beams = K): at step t every alive beam proposes every token; candidates ending in a stop
token enter the pool of finished hypotheses (the best K are kept), the best K others stay alive; at the
last step the alive beams finish unstopped. The search stops early once no alive beam can beat the K-th
finished one (exact for length_penalty >= 0, since log-probs are <= 0). With K >= (allowed tokens) **
(max_new_tokens - 1) it is an exhaustive search (tests/test_eval_decoding.py checks that).

Cost: the prompt is prefilled once per prompt (not per beam) and its cache repeated to the beams; after the
prompt, every step cross-attends to the LAST prompt image only (what the 'previous' mask lets new tokens
see), so the visual keys/values of the other images are not re-projected at every step (see _step_media).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

NEG_INF = -1e30  # finite "minus infinity": keeps arithmetic NaN-free; anything below -1e29 is "impossible"


@dataclasses.dataclass(frozen=True)
class GenerationConfig:
    """Open-ended generation settings (hashable: a static jit argument)."""

    max_new_tokens: int = 20
    num_beams: int = 3          # 1 = greedy
    length_penalty: float = 0.0
    stop_ids: tuple[int, ...] = ()
    banned_ids: tuple[int, ...] = ()


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


def _isin(ids: tuple[int, ...], size: int) -> jax.Array:
    m = np.zeros((size,), bool)
    m[list(ids)] = True
    return jnp.asarray(m)


class Decoder:
    """Jitted encode / generate / rank for one Flamingo model (params are an argument, not captured).

    model: the Flamingo module (flamingo_jax.models.build(config.model)). pad_id pads prompts and finished
    rows; it is never attended to (token_mask).

    On a mesh (`mesh` and the params' `param_shardings`, e.g. flamingo_jax.sharding.tree_shardings): every
    function is jitted with explicit in and out shardings, params as given, the batch (prompts, images,
    visual tokens, results) split over the (data, fsdp) axes, the KV cache constrained to the same batch split,
    candidates replicated. Host inputs move by explicit jax.device_put into those shardings and results come
    back by the caller's jax.device_get, so decoding runs under JAX_TRANSFER_GUARD=disallow. Batch sizes must
    divide data * fsdp. Without a mesh: one device, the arrays' default placement."""

    def __init__(self, model: nn.Module, pad_id: int = 0, mesh: Any = None, param_shardings: Any = None):
        self.model = model
        self.pad_id = pad_id
        self.mesh = mesh
        vision = lambda p, x: model.apply({"params": p}, x, method=lambda m, x: m.vision(x))  # noqa: E731
        pooled = lambda p, x: vision(p, x).astype(jnp.float32).mean(axis=1)  # noqa: E731
        encode = lambda p, images: model.apply({"params": p}, images, method="encode")  # noqa: E731
        if mesh is None:
            self._encode = jax.jit(encode)
            self._generate = jax.jit(self._generate_positional, static_argnums=5)
            self._rank = jax.jit(self._rank_impl)
            self._vision = jax.jit(pooled)
            return
        if param_shardings is None:
            raise ValueError("a Decoder on a mesh needs the params' shardings (param_shardings)")
        from flamingo_jax import sharding

        b = lambda ndim: sharding.batch_sharding(mesh, ndim)  # noqa: E731
        rep = sharding.replicated(mesh)
        ps = param_shardings
        self._encode = jax.jit(encode, in_shardings=(ps, b(6)), out_shardings=b(4))
        self._generate = jax.jit(self._generate_positional, static_argnums=5,
                                 in_shardings=(ps, b(2), b(2), b(4), b(2)),
                                 out_shardings=dict(tokens=b(3), scores=b(2), lengths=b(2)))
        self._rank = jax.jit(self._rank_impl, in_shardings=(ps, b(2), b(2), b(4), b(2), rep, rep),
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
        candidate_mask) after each left-padded prompt int32[B, L]: one prefill, then one batched forward of
        all candidates from the cached prompt."""
        return self._rank(params, self._put(tokens, 2), self._put(token_mask, 2), self._put(visual, 4),
                          self._put(image_mask, 2), self._put(candidates), self._put(candidate_mask))

    # ------------------------------------------------------------------ internals
    def _decode(self, params, tokens, visual, image_mask, token_mask, cache, media_index=None):
        return self.model.apply({"params": params}, tokens, visual, image_mask, media_index, token_mask, cache,
                                method="decode")

    def _step_media(self, visual, image_mask, cache):
        """The visual input of the tokens after the prompt: (visual, image_mask, media index or None).

        New tokens only see the LAST prompt image under the 'previous' mask (spec section 6), so each step
        attends to (and projects) that image's tokens only, passed as image 1 with an explicit media index,
        instead of re-projecting every prompt image at every step: T times less cross-attention work, exactly
        the same result (masked visual tokens contribute exact zeros)."""
        if self.model.config.xattn.mask != "previous":
            return visual, image_mask, None
        count = cache["media_count"]  # [B]: images in each prompt
        last = jnp.clip(count - 1, 0, visual.shape[1] - 1)
        visual = jnp.take_along_axis(visual, last[:, None, None, None], axis=1)  # [B, 1, K, D]
        present = (count > 0)[:, None]
        return visual, present, present.astype(jnp.int32)

    def _prefill(self, params, tokens, token_mask, visual, image_mask, extra: int):
        b, l = tokens.shape
        cache = self.model.apply({"params": params}, b, l + extra, method="init_cache")
        if self.mesh is not None:
            cache = self._constrain(cache, _batch_axes(self.model, params, l + extra))
        logits, cache = self._decode(params, tokens, visual, image_mask, token_mask, cache)
        return jax.nn.log_softmax(logits[:, -1].astype(jnp.float32)), cache

    def _generate_positional(self, params, tokens, token_mask, visual, image_mask, gen: GenerationConfig):
        return self._generate_impl(params, tokens, token_mask, visual, image_mask, gen=gen)

    def _generate_impl(self, params, tokens, token_mask, visual, image_mask, *, gen: GenerationConfig):
        n = gen.max_new_tokens
        logp, cache = self._prefill(params, tokens, token_mask, visual, image_mask, n)
        vocab = logp.shape[-1]
        banned = _isin(gen.banned_ids, vocab)
        stop = _isin(gen.stop_ids, vocab)
        logp = jnp.where(banned, NEG_INF, logp)
        step_media = self._step_media(visual, image_mask, cache)
        if gen.num_beams == 1:
            return self._greedy(params, logp, cache, step_media, gen, banned, stop)
        axes = _batch_axes(self.model, params, tokens.shape[1] + n)
        return self._beam(params, logp, cache, axes, step_media, gen, banned, stop)

    def _greedy(self, params, logp, cache, step_media, gen, banned, stop):
        visual, image_mask, media = step_media
        b = logp.shape[0]
        n = gen.max_new_tokens
        ones = jnp.ones((b, 1), bool)

        def body(t, state):
            logp, cache, out, score, length, done = state
            tok = jnp.argmax(logp, axis=-1).astype(jnp.int32)
            live = ~done
            score = score + jnp.where(live, jnp.take_along_axis(logp, tok[:, None], 1)[:, 0], 0.0)
            out = out.at[:, t].set(jnp.where(live, tok, self.pad_id))
            length = length + live.astype(jnp.int32)
            done = done | stop[tok]
            logits, cache = self._decode(params, tok[:, None], visual, image_mask, ones, cache, media)
            logp = jnp.where(banned, NEG_INF, jax.nn.log_softmax(logits[:, -1].astype(jnp.float32)))
            return logp, cache, out, score, length, done

        init = (logp, cache, jnp.full((b, n), self.pad_id, jnp.int32), jnp.zeros((b,), jnp.float32),
                jnp.zeros((b,), jnp.int32), jnp.zeros((b,), bool))
        # The last step's decode is never used; a while_loop lets all-finished batches stop early.
        def cond(s):
            t, state = s
            return (t < n) & ~jnp.all(state[-1])

        _, (_, _, out, score, length, _) = jax.lax.while_loop(cond, lambda s: (s[0] + 1, body(s[0], s[1])),
                                                               (jnp.int32(0), init))
        norm = score / jnp.maximum(length, 1).astype(jnp.float32) ** gen.length_penalty
        return dict(tokens=out[:, None], scores=norm[:, None], lengths=length[:, None])

    def _beam(self, params, logp, cache, axes, step_media, gen, banned, stop):
        visual, image_mask, media = step_media
        b, vocab = logp.shape
        k, n, alpha = gen.num_beams, gen.max_new_tokens, gen.length_penalty
        rep = lambda x: jnp.repeat(x, k, axis=0)  # noqa: E731  row i -> rows i*k .. i*k+k-1
        cache = self._constrain(_map_batch(cache, axes, lambda x, a: jnp.repeat(x, k, axis=a)), axes)
        visual, image_mask = rep(visual), rep(image_mask)
        media = None if media is None else rep(media)
        logp = rep(logp).reshape(b, k, vocab)
        alive = jnp.tile(jnp.where(jnp.arange(k) == 0, 0.0, NEG_INF), (b, 1))  # one live beam at first
        seqs = jnp.full((b, k, n), self.pad_id, jnp.int32)
        fin_seqs, fin_scores = seqs, jnp.full((b, k), NEG_INF)
        fin_lens = jnp.zeros((b, k), jnp.int32)
        ones = jnp.ones((b * k, 1), bool)
        token_ids = jnp.arange(vocab, dtype=jnp.int32)

        def norm(score, length):
            return score / jnp.float32(length) ** alpha

        def body(state):
            t, logp, cache, alive, seqs, fin_seqs, fin_scores, fin_lens = state
            cand = alive[..., None] + logp  # [B, K, V]
            cand = jnp.where(cand < NEG_INF / 2, NEG_INF, cand)
            flat = cand.reshape(b, k * vocab)
            is_stop = jnp.tile(stop, k)[None]  # [1, K*V]
            beam_of, tok_of = jnp.arange(k * vocab) // vocab, token_ids[jnp.arange(k * vocab) % vocab]

            def with_token(beams, toks):  # new sequences: parent beams [B, K'] + token at step t
                parent = jnp.take_along_axis(seqs, beams[..., None], axis=1)
                return parent.at[:, :, t].set(toks)

            # Candidates ending in a stop token finish now (length t + 1).
            f_score, f_idx = jax.lax.top_k(jnp.where(is_stop, flat, NEG_INF), k)
            f_seqs = with_token(beam_of[f_idx], tok_of[f_idx])
            f_score = jnp.where(f_score > NEG_INF / 2, norm(f_score, t + 1), NEG_INF)
            # The others continue; at the last step they finish unstopped (length n).
            c_score, c_idx = jax.lax.top_k(jnp.where(is_stop, NEG_INF, flat), k)
            c_beams, c_toks = beam_of[c_idx], tok_of[c_idx]
            c_seqs = with_token(c_beams, c_toks)
            last = t == n - 1
            u_score = jnp.where(last & (c_score > NEG_INF / 2), norm(c_score, n), NEG_INF)
            pool_scores = jnp.concatenate([fin_scores, f_score, u_score], axis=1)
            pool_seqs = jnp.concatenate([fin_seqs, f_seqs, c_seqs], axis=1)
            pool_lens = jnp.concatenate([fin_lens, jnp.full((b, k), t + 1), jnp.full((b, k), n)], axis=1)
            fin_scores, top = jax.lax.top_k(pool_scores, k)
            fin_seqs = jnp.take_along_axis(pool_seqs, top[..., None], axis=1)
            fin_lens = jnp.take_along_axis(pool_lens, top, axis=1).astype(jnp.int32)
            # Advance the alive beams: reorder the cache rows to their parents, feed the new tokens.
            rows = (jnp.arange(b)[:, None] * k + c_beams).reshape(-1)
            cache = _map_batch(cache, axes, lambda x, a: jnp.take(x, rows, axis=a))
            logits, cache = self._decode(params, c_toks.reshape(-1, 1), visual, image_mask, ones, cache, media)
            logp = jnp.where(banned, NEG_INF, jax.nn.log_softmax(logits[:, -1].astype(jnp.float32)))
            return (t + 1, logp.reshape(b, k, vocab), cache, c_score, c_seqs, fin_seqs, fin_scores, fin_lens)

        def cond(state):
            t, alive, fin_scores = state[0], state[3], state[6]
            # Log-probs are <= 0: an alive beam's normalised score is at best its sum / n ** alpha.
            best_alive = jnp.max(alive, axis=1)
            bound = best_alive / jnp.float32(n) ** alpha if alpha >= 0 else jnp.full_like(best_alive, jnp.inf)
            hopeless = (fin_scores[:, -1] >= bound) | (best_alive < NEG_INF / 2)
            return (t < n) & ~jnp.all(hopeless)

        state = (jnp.int32(0), logp, cache, alive, seqs, fin_seqs, fin_scores, fin_lens)
        state = jax.lax.while_loop(cond, body, state)
        fin_seqs, fin_scores, fin_lens = state[5], state[6], state[7]
        pos = jnp.arange(n)[None, None]
        fin_seqs = jnp.where(pos < fin_lens[..., None], fin_seqs, self.pad_id)
        return dict(tokens=fin_seqs, scores=fin_scores, lengths=fin_lens)

    def _rank_impl(self, params, tokens, token_mask, visual, image_mask, cands, cand_mask):
        c, lc = cands.shape
        b = tokens.shape[0]
        logp0, cache = self._prefill(params, tokens, token_mask, visual, image_mask, lc)
        axes = _batch_axes(self.model, params, tokens.shape[1] + lc)
        rows_tokens = jnp.tile(cands, (b, 1))  # row i*c + j = candidate j of prompt i
        rows_mask = jnp.tile(cand_mask, (b, 1))
        visual, image_mask, media = self._step_media(visual, image_mask, cache)
        media = None if media is None else jnp.repeat(jnp.broadcast_to(media, (b, lc)), c, axis=0)
        cache = self._constrain(_map_batch(cache, axes, lambda x, a: jnp.repeat(x, c, axis=a)), axes)
        logits, _ = self._decode(params, rows_tokens, jnp.repeat(visual, c, axis=0),
                                 jnp.repeat(image_mask, c, axis=0), rows_mask, cache, media)
        logp = jax.nn.log_softmax(logits.astype(jnp.float32))  # [B*C, Lc, V]
        first = jnp.take_along_axis(jnp.repeat(logp0, c, axis=0), rows_tokens[:, :1], axis=1)[:, 0]
        rest = jnp.take_along_axis(logp[:, :-1], rows_tokens[:, 1:, None], axis=2)[..., 0]
        total = first + jnp.sum(jnp.where(rows_mask[:, 1:], rest, 0.0), axis=1)
        return total.reshape(b, c)


_DECODERS: dict[tuple[str, int], Decoder] = {}


def decoder_for(model: nn.Module, pad_id: int = 0, mesh: Any = None, param_shardings: Any = None) -> Decoder:
    """A shared Decoder per (model config, pad id, mesh and param shardings): its jitted functions (and
    compiles) are reused."""
    key = (model.config.to_json_best_effort(sort_keys=True), pad_id, mesh,
           None if param_shardings is None else tuple(jax.tree.leaves(param_shardings)))
    if key not in _DECODERS:
        _DECODERS[key] = Decoder(model, pad_id, mesh, param_shardings)
    return _DECODERS[key]
