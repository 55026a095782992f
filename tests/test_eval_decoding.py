"""Decoding: beam search equals exhaustive search, cached equals uncached, left padding is invisible."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flamingo_jax.evaluation import decoding
import tiny

BASE = 4  # base vocabulary: ids 0..3, <image> = 4, <EOC> = 5 -> 6 tokens
EOS, PAD = 1, 0
STEPS = 3


@pytest.fixture(scope="module")
def setup():
    """A 1-layer tiny model with 6 tokens and two prompts: one with two images, one shorter (left-padded)
    with a single image. Every test uses this batch of 2, so each jitted function compiles once."""
    config = tiny.tiny_model_config(num_layers=1)
    config.lm.vocab_size = BASE
    config.image_token_id, config.eoc_token_id = BASE, BASE + 1
    rows = [[2, BASE, 3, 2, 0, BASE, 3], [BASE, 3, 2, 2]]
    imgs = tiny.images(batch=2, num_images=2)
    mask = jnp.array([[True, True], [True, False]])
    toks, tmask = decoding.left_pad(rows, 8, PAD)
    model, params, _ = tiny.init_params(config, jnp.asarray(toks), imgs, mask)
    params = tiny.set_gates(params, 0.7)
    # Peaked distributions: random-init logits are nearly uniform, which would make the argmax fragile.
    params = jax.tree_util.tree_map_with_path(
        lambda path, x: x * 40.0 if any(getattr(k, "key", "") in ("head", "unembedding") for k in path) else x, params)
    dec = decoding.Decoder(model, pad_id=PAD)
    visual = dec.encode(params, imgs)
    stop, banned = (config.eoc_token_id, EOS), (config.image_token_id, )
    return dict(model=model, params=params, dec=dec, rows=rows, toks=toks, tmask=tmask, imgs=imgs, mask=mask,
                visual=visual, stop=stop, banned=banned)


ROWS, LEN = 64, 16  # every uncached forward uses this shape: one compile


def _uncached_logp(model, params, prefix_rows, imgs, mask):
    """log_softmax of teacher-forced logits (no cache) for right-padded rows; imgs/mask: one row each or
    one shared row."""
    n = len(prefix_rows)
    toks, tmask = decoding.right_pad(prefix_rows + [[PAD]] * (ROWS - n), LEN, PAD)
    if imgs.shape[0] == 1:
        imgs, mask = jnp.repeat(imgs, n, 0), jnp.repeat(mask, n, 0)
    imgs = jnp.concatenate([imgs, jnp.zeros((ROWS - n, *imgs.shape[1:]), imgs.dtype)])
    mask = jnp.concatenate([mask, jnp.zeros((ROWS - n, mask.shape[1]), bool)])
    return np.asarray(_forward(model)(params, toks, imgs, mask, tmask))[:n], toks[:n]


_FORWARDS = {}


def _forward(model):
    if id(model) not in _FORWARDS:
        _FORWARDS[id(model)] = jax.jit(
            lambda p, t, i, m, tm: jax.nn.log_softmax(model.apply({"params": p}, t, i, m, None, tm), -1))
    return _FORWARDS[id(model)]


def _exhaustive(model, params, prompt, imgs, mask, stop, banned):
    """All continuations of up to STEPS tokens (ending at a stop token or at STEPS) and their log-liks."""
    allowed = [t for t in range(BASE + 2) if t not in banned]
    go = [t for t in allowed if t not in stop]
    seqs = []
    for n in range(1, STEPS + 1):
        for head in itertools.product(go, repeat=n - 1):
            for last in allowed:
                if n == STEPS or last in stop:
                    seqs.append(list(head) + [last])
    logp, _ = _uncached_logp(model, params, [prompt + s for s in seqs], imgs, mask)
    scores = [sum(logp[i, len(prompt) - 1 + j, t] for j, t in enumerate(s)) for i, s in enumerate(seqs)]
    return seqs, np.array(scores)


def test_beam_search_equals_exhaustive_search(setup):
    """Batched, left-padded, cached beam search with K >= 3 ** (STEPS - 1) beams returns exactly the top K of
    an exhaustive enumeration scored without the cache (so the beam bookkeeping, cache reordering, stop
    handling and padding are all right; beam 3 is the same code with K = 3)."""
    s = setup
    k = 9  # >= (allowed non-stop tokens) ** (STEPS - 1) = 3 ** 2: beam search is then exact
    gen = decoding.GenerationConfig(max_new_tokens=STEPS, num_beams=k, stop_ids=s["stop"], banned_ids=s["banned"])
    out = jax.device_get(s["dec"].generate(s["params"], s["toks"], s["tmask"], s["visual"], s["mask"], gen))
    lengths = set()
    for i, row in enumerate(s["rows"]):
        seqs, scores = _exhaustive(s["model"], s["params"], row, s["imgs"][i:i + 1], s["mask"][i:i + 1], s["stop"],
                                   s["banned"])
        order = np.argsort(-scores)[:k]
        got = [list(out["tokens"][i, j, :out["lengths"][i, j]]) for j in range(k)]
        assert got == [seqs[j] for j in order]
        np.testing.assert_allclose(out["scores"][i], scores[order], rtol=1e-5, atol=1e-5)
        assert (np.where(np.arange(STEPS)[None] >= out["lengths"][i][:, None], out["tokens"][i], PAD) == PAD).all()
        lengths |= set(out["lengths"][i].tolist())
    assert len(lengths) > 1  # both stopped and unstopped hypotheses were exercised


def test_greedy_cached_equals_uncached(setup):
    s = setup
    gen = decoding.GenerationConfig(max_new_tokens=STEPS, num_beams=1, stop_ids=(), banned_ids=s["banned"])
    out = jax.device_get(s["dec"].generate(s["params"], s["toks"], s["tmask"], s["visual"], s["mask"], gen))
    seqs, totals = [list(r) for r in s["rows"]], [0.0, 0.0]
    for _ in range(STEPS):  # uncached greedy: a full forward per step, no padding on the left
        logp, _ = _uncached_logp(s["model"], s["params"], seqs, s["imgs"], s["mask"])
        for i, seq in enumerate(seqs):
            last = logp[i, len(seq) - 1].copy()
            last[list(s["banned"])] = -np.inf
            t = int(np.argmax(last))
            totals[i] += last[t]
            seq.append(t)
    for i, row in enumerate(s["rows"]):
        assert list(out["tokens"][i, 0]) == seqs[i][len(row):]
        assert out["scores"][i, 0] == pytest.approx(totals[i], rel=1e-5, abs=1e-5)


def test_rank_equals_uncached_loglik(setup):
    s = setup
    cands = [[2], [3, 0], [0, 2, BASE + 1]]
    ctoks, cmask = decoding.right_pad(cands, 3, PAD)
    got = np.asarray(s["dec"].rank(s["params"], s["toks"], s["tmask"], s["visual"], s["mask"], ctoks, cmask))
    for i, p in enumerate(s["rows"]):
        logp, _ = _uncached_logp(s["model"], s["params"], [p + c for c in cands], s["imgs"][i:i + 1],
                                 s["mask"][i:i + 1])
        want = [sum(logp[r, len(p) - 1 + j, t] for j, t in enumerate(c)) for r, c in enumerate(cands)]
        np.testing.assert_allclose(got[i], want, rtol=1e-5, atol=1e-5)


def test_bucket_and_padding_helpers():
    assert [decoding.bucket(n) for n in (1, 16, 17, 100)] == [16, 16, 32, 128]
    t, m = decoding.left_pad([[1, 2], [3]], 4, 0)
    assert t.tolist() == [[0, 0, 1, 2], [0, 0, 0, 3]] and m.sum() == 3
    with pytest.raises(ValueError):
        decoding.left_pad([[1] * 5], 4, 0)


def test_length_penalty_ranks_by_sum_over_length_to_the_alpha(setup):
    """With length_penalty alpha, finished hypotheses rank by sum log p / length ** alpha (length counts the stop
    token): the top K equal the exhaustive enumeration ranked by that formula, and on these prompts the penalty
    changes which hypothesis wins on both prompts (so the plain-sum ranking would fail here): with flatter
    distributions (the head 20x smaller than the setup's) stopping at once wins the plain sum on prompt 0 ([<EOC>])
    and a 2-token answer on prompt 1, but 3-token answers win per token."""
    s = dict(setup)
    s["params"] = jax.tree_util.tree_map_with_path(
        lambda path, x: x * 0.05
        if any(getattr(k, "key", "") in ("head", "unembedding") for k in path) else x, s["params"])
    s["visual"] = s["dec"].encode(s["params"], s["imgs"])
    k, alpha = 9, 1.0
    gen = decoding.GenerationConfig(max_new_tokens=STEPS, num_beams=k, length_penalty=alpha, stop_ids=s["stop"],
                                    banned_ids=s["banned"])
    out = jax.device_get(s["dec"].generate(s["params"], s["toks"], s["tmask"], s["visual"], s["mask"], gen))
    for i, row in enumerate(s["rows"]):
        seqs, scores = _exhaustive(s["model"], s["params"], row, s["imgs"][i:i + 1], s["mask"][i:i + 1], s["stop"],
                                   s["banned"])
        norm = scores / np.array([len(q) for q in seqs], float)**alpha
        order = np.argsort(-norm)[:k]
        got = [list(out["tokens"][i, j, :out["lengths"][i, j]]) for j in range(k)]
        assert got == [seqs[j] for j in order], i
        np.testing.assert_allclose(out["scores"][i], norm[order], rtol=1e-5, atol=1e-5)
        assert len(seqs[int(np.argmax(scores))]) < STEPS == len(seqs[int(np.argmax(norm))]), i
        assert out["lengths"][i, 0] == STEPS


def test_rank_per_row_equals_ranking_each_row_on_its_own(setup):
    """Each prompt its own candidates (different counts and lengths, the shorter list padded with a repeat): the
    log-likelihoods equal rank() of that row's list alone, i.e. the harness's former row-at-a-time ranking (one
    candidate list per call), within 1e-5. The per-row lists share no candidate at the same slot, so scoring a
    row against the other row's candidates would fail."""
    s = setup
    own = [[[2], [3, 0], [0, 2, BASE + 1]], [[3, 3, 2], [BASE + 1]]]
    ctoks, cmask = decoding.pad_candidate_rows(own, 3, 3, PAD)
    assert ctoks.shape == (2, 3, 3) and ctoks[1, 2].tolist() == [BASE + 1, PAD, PAD]  # the repeat
    got = np.asarray(s["dec"].rank_per_row(s["params"], s["toks"], s["tmask"], s["visual"], s["mask"], ctoks, cmask))
    for i, cands in enumerate(own):
        alone = decoding.right_pad(cands + [cands[-1]] * (3 - len(cands)), 3, PAD)  # rank()'s shape: one compile
        want = np.asarray(s["dec"].rank(s["params"], s["toks"], s["tmask"], s["visual"], s["mask"], *alone))[i]
        np.testing.assert_allclose(got[i], want, rtol=1e-5, atol=1e-5)
    assert not np.allclose(got[1][:2], got[0][:2], atol=1e-3)
    with pytest.raises(ValueError, match="pads them to 3"):
        decoding.pad_candidate_rows([[[1]] * 4], 3, 3, PAD)
