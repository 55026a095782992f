"""Choosing the generated tokens: greedy decoding and beam search over a model's next-token log-probs.

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

The model is reached only through `step(tokens int32[N], cache) -> (logp float32[N, V], cache)`, one new
token per row (evaluation.decoding.Decoder runs it on its cached prompt), and, for beam search,
`reorder(cache, rows int32[N]) -> cache`, which gives row i the cache of row rows[i].
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

NEG_INF = -1e30  # finite "minus infinity": keeps arithmetic NaN-free; anything below -1e29 is "impossible"

Step = Callable[[jax.Array, Any], tuple[jax.Array, Any]]


@dataclasses.dataclass(frozen=True)
class GenerationConfig:
    """Open-ended generation settings (hashable: a static jit argument)."""

    max_new_tokens: int = 20
    num_beams: int = 3  # 1 = greedy
    length_penalty: float = 0.0
    stop_ids: tuple[int, ...] = ()
    banned_ids: tuple[int, ...] = ()
    min_new_tokens: int = 0  # stop tokens are impossible before this many tokens (HuggingFace's meaning)


def token_set(ids: tuple[int, ...], size: int) -> jax.Array:
    """bool[size]: True at ids."""
    m = np.zeros((size, ), bool)
    m[list(ids)] = True
    return jnp.asarray(m)


def greedy(step: Step, logp: jax.Array, cache: Any, gen: GenerationConfig, stop: jax.Array, pad_id: int) -> dict:
    """The most likely token at every step. logp [B, V]: the first token's log-probs (banned tokens already
    at NEG_INF); cache: the rows' own cache for max_new_tokens tokens; stop: bool[V].

    Returns {'tokens' int32[B, 1, n] (pad_id after the stop), 'scores' [B, 1], 'lengths' int32[B, 1]}."""
    b = logp.shape[0]
    n = gen.max_new_tokens

    def body(t, state):
        logp, cache, out, score, length, done = state
        logp = jnp.where(stop & (t < gen.min_new_tokens), NEG_INF, logp)
        tok = jnp.argmax(logp, axis=-1).astype(jnp.int32)
        live = ~done
        score = score + jnp.where(live, jnp.take_along_axis(logp, tok[:, None], 1)[:, 0], 0.0)
        out = out.at[:, t].set(jnp.where(live, tok, pad_id))
        length = length + live.astype(jnp.int32)
        done = done | stop[tok]
        logp, cache = step(tok, cache)
        return logp, cache, out, score, length, done

    init = (logp, cache, jnp.full((b, n), pad_id, jnp.int32), jnp.zeros((b, ), jnp.float32), jnp.zeros(
        (b, ), jnp.int32), jnp.zeros((b, ), bool))

    # The last step's decode is never used; a while_loop lets all-finished batches stop early.
    def cond(s):
        t, state = s
        return (t < n) & ~jnp.all(state[-1])

    _, (_, _, out, score, length, _) = jax.lax.while_loop(cond, lambda s: (s[0] + 1, body(s[0], s[1])),
                                                          (jnp.int32(0), init))
    norm = score / jnp.maximum(length, 1).astype(jnp.float32)**gen.length_penalty
    return dict(tokens=out[:, None], scores=norm[:, None], lengths=length[:, None])


def beam_search(step: Step, reorder: Callable[[Any, jax.Array], Any], logp: jax.Array, cache: Any,
                gen: GenerationConfig, stop: jax.Array, pad_id: int) -> dict:
    """Beam search with K = gen.num_beams beams per prompt (see the module docstring). logp [B, V]: the first
    token's log-probs (banned tokens already at NEG_INF); cache: the own cache of B*K rows, beam j of prompt
    i in row i*K + j; stop: bool[V].

    Returns {'tokens' int32[B, K, n] (pad_id after each hypothesis' end), 'scores' [B, K] (best first),
    'lengths' int32[B, K]}."""
    b, vocab = logp.shape
    k, n, alpha = gen.num_beams, gen.max_new_tokens, gen.length_penalty
    logp = jnp.repeat(logp, k, axis=0).reshape(b, k, vocab)
    alive = jnp.tile(jnp.where(jnp.arange(k) == 0, 0.0, NEG_INF), (b, 1))  # one live beam at first
    seqs = jnp.full((b, k, n), pad_id, jnp.int32)
    fin_seqs, fin_scores = seqs, jnp.full((b, k), NEG_INF)
    fin_lens = jnp.zeros((b, k), jnp.int32)
    token_ids = jnp.arange(vocab, dtype=jnp.int32)

    def norm(score, length):
        return score / jnp.float32(length)**alpha

    def body(state):
        t, logp, cache, alive, seqs, fin_seqs, fin_scores, fin_lens = state
        logp = jnp.where(stop & (t < gen.min_new_tokens), NEG_INF, logp)
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
        # Advance the alive beams: reorder their caches to their parents, feed the new tokens.
        rows = (jnp.arange(b)[:, None] * k + c_beams).reshape(-1)
        logp, cache = step(c_toks.reshape(-1), reorder(cache, rows))
        return (t + 1, logp.reshape(b, k, vocab), cache, c_score, c_seqs, fin_seqs, fin_scores, fin_lens)

    def cond(state):
        t, alive, fin_scores = state[0], state[3], state[6]
        # Log-probs are <= 0: an alive beam's normalised score is at best its sum / n ** alpha.
        best_alive = jnp.max(alive, axis=1)
        bound = best_alive / jnp.float32(n)**alpha if alpha >= 0 else jnp.full_like(best_alive, jnp.inf)
        hopeless = (fin_scores[:, -1] >= bound) | (best_alive < NEG_INF / 2)
        return (t < n) & ~jnp.all(hopeless)

    state = (jnp.int32(0), logp, cache, alive, seqs, fin_seqs, fin_scores, fin_lens)
    state = jax.lax.while_loop(cond, body, state)
    fin_seqs, fin_scores, fin_lens = state[5], state[6], state[7]
    pos = jnp.arange(n)[None, None]
    fin_seqs = jnp.where(pos < fin_lens[..., None], fin_seqs, pad_id)
    return dict(tokens=fin_seqs, scores=fin_scores, lengths=fin_lens)
