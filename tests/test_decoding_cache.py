"""The decoder's caches: cross-attention keys/values projected once per prompt, a prompt prefix shared by
beams, candidates and queries (the same shots), every path equal to decoding without caches."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flamingo_jax.evaluation import decoding
import tiny

BASE = 6  # base vocabulary 0..5, <image> = 6, <EOC> = 7
IMG, EOC, PAD = BASE, BASE + 1, 0
STEPS = 3
ROWS, LEN = 16, 16  # the uncached forward's one shape per model


def _model(kind="gated", scan=False, mask="previous", family="llama"):
    config = tiny.tiny_model_config(kind, scan=scan, mask=mask, family=family, num_layers=2)
    config.lm.vocab_size = BASE
    config.image_token_id, config.eoc_token_id = IMG, EOC
    toks = jnp.zeros((1, 4), jnp.int32)
    model, params, _ = tiny.init_params(config, toks, tiny.images(1, 2), jnp.ones((1, 2), bool))
    params = tiny.set_gates(params, 0.7)
    # Peaked distributions: near-uniform random-init logits would make the argmax fragile.
    out_rows = ("head", "unembedding", "embed") if config.lm.tie_embeddings else ("head", "unembedding")
    params = jax.tree_util.tree_map_with_path(
        lambda path, x: x * 30.0 if any(getattr(k, "key", "") in out_rows for k in path) else x, params)
    return model, params


def _uncached(model, params):
    """Teacher-forced log-probs without any cache: right-padded rows [n, <= LEN], images [n, T, ...]."""
    fwd = jax.jit(lambda p, t, i, m, tm: jax.nn.log_softmax(model.apply({"params": p}, t, i, m, None, tm), -1))

    def run(rows, imgs, mask):
        n = len(rows)
        toks, tmask = decoding.right_pad(rows + [[PAD]] * (ROWS - n), LEN, PAD)
        pad_imgs = jnp.zeros((ROWS - n, *imgs.shape[1:]), imgs.dtype)
        imgs = jnp.concatenate([imgs, pad_imgs])
        mask = jnp.concatenate([mask, jnp.zeros((ROWS - n, mask.shape[1]), bool)])
        return np.asarray(fwd(params, toks, imgs, mask, tmask))[:n]

    return run


def _greedy_uncached(run, rows, imgs, mask, banned):
    seqs, totals = [list(r) for r in rows], [0.0] * len(rows)
    for _ in range(STEPS):
        logp = run(seqs, imgs, mask)
        for i, seq in enumerate(seqs):
            last = logp[i, len(seq) - 1].copy()
            last[list(banned)] = -np.inf
            t = int(np.argmax(last))
            totals[i] += last[t]
            seq.append(t)
    return [s[len(r):] for s, r in zip(seqs, rows)], totals


def _rank_uncached(run, rows, imgs, mask, cands):
    out = []
    for i, p in enumerate(rows):
        logp = run([p + c for c in cands], jnp.repeat(imgs[i:i + 1], len(cands), 0),
                   jnp.repeat(mask[i:i + 1], len(cands), 0))
        out.append([sum(logp[r, len(p) - 1 + j, t] for j, t in enumerate(c)) for r, c in enumerate(cands)])
    return np.array(out)


ROWS_A = [[2, IMG, 3, 1, EOC, IMG, 4], [IMG, 5, 2, 2]]  # two images / one image, left-padded below
CANDS = [[2], [3, 1], [1, 2, EOC], [3, 4], [1, 5, 2]]  # chunks of 2: a partial last one; shared first tokens


@pytest.mark.parametrize(
    "kind,scan,mask,family",
    [
        ("vanilla", True, "previous", "llama"),
        ("grafting", False, "previous", "mpt"),  # ALiBi: the own cache's slots continue the prefix's
        ("gated", True, "all_previous", "llama"),
    ])
def test_cached_decoding_equals_uncached(kind, scan, mask, family):
    """Greedy generation and chunked ranking on the cached prefix (visual keys/values projected once, beams
    and candidates sharing the prompt) give the uncached model's tokens and log-likelihoods, for every
    cross-attention kind, stacked layers, both media masks and ALiBi."""
    model, params = _model(kind, scan, mask, family)
    imgs = tiny.images(2, 2)
    imask = jnp.array([[True, True], [True, False]])
    toks, tmask = decoding.left_pad(ROWS_A, 8, PAD)
    dec = decoding.Decoder(model, pad_id=PAD, rank_chunk=2)
    visual = dec.encode(params, imgs)
    run = _uncached(model, params)
    gen = decoding.GenerationConfig(max_new_tokens=STEPS, num_beams=1, banned_ids=(IMG, ))
    out = jax.device_get(dec.generate(params, toks, tmask, visual, imask, gen))
    want, totals = _greedy_uncached(run, ROWS_A, imgs, imask, (IMG, ))
    for i in range(2):
        assert out["tokens"][i, 0].tolist() == want[i]
        np.testing.assert_allclose(out["scores"][i, 0], totals[i], rtol=1e-5, atol=1e-5)
    ctoks, cmask = decoding.right_pad(CANDS, 3, PAD)
    got = np.asarray(dec.rank(params, toks, tmask, visual, imask, ctoks, cmask))
    np.testing.assert_allclose(got, _rank_uncached(run, ROWS_A, imgs, imask, CANDS), rtol=1e-5, atol=1e-5)


SHOTS = [3, IMG, 2, 4, EOC]  # one shot with one image, shared by both queries
QUERIES = [[IMG, 1, 2], [5, IMG, 3, 3, 1]]  # the second has text before its image (sees the shot's image)


@pytest.mark.parametrize("mask", ["previous", "all_previous"])
def test_shared_shots_prefix_equals_full_prompts(mask):
    """The shots prefilled once (one row) and extended by each query's tokens and image give the same beam
    search, greedy and ranking results as prefilling every full prompt (shots + query): identical token ids,
    scores within fp32 tolerance."""
    model, params = _model("gated", False, mask)
    dec = decoding.Decoder(model, pad_id=PAD, rank_chunk=4)
    imgs = tiny.images(2, 2, seed=3)
    imgs = imgs.at[1, 0].set(imgs[0, 0])  # row i: [the shot's image, query i's image]
    visual = dec.encode(params, imgs)
    shots = dec.prefill(params, *decoding.left_pad([SHOTS], 8, PAD), visual[:1, :1], jnp.ones((1, 1), bool))
    qt, qm = decoding.left_pad(QUERIES, 8, PAD)
    prefix = dec.extend(params, shots, qt, qm, visual[:, 1:], jnp.ones((2, 1), bool))
    full_t, full_m = decoding.left_pad([SHOTS + q for q in QUERIES], 16, PAD)
    imask = jnp.ones((2, 2), bool)
    for beams in (3, 1):
        gen = decoding.GenerationConfig(max_new_tokens=STEPS, num_beams=beams, stop_ids=(EOC, ), banned_ids=(IMG, ))
        a = jax.device_get(dec.generate_from(params, prefix, gen))
        b = jax.device_get(dec.generate(params, full_t, full_m, visual, imask, gen))
        np.testing.assert_array_equal(a["tokens"], b["tokens"])
        np.testing.assert_array_equal(a["lengths"], b["lengths"])
        np.testing.assert_allclose(a["scores"], b["scores"], rtol=1e-5, atol=1e-5)
    ctoks, cmask = decoding.right_pad(CANDS, 3, PAD)
    a = np.asarray(dec.rank_from(params, prefix, ctoks, cmask))
    b = np.asarray(dec.rank(params, full_t, full_m, visual, imask, ctoks, cmask))
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    run = _uncached(model, params)
    np.testing.assert_allclose(a, _rank_uncached(run, [SHOTS + q for q in QUERIES], imgs, imask, CANDS), rtol=1e-5,
                               atol=1e-5)


def test_decode_steps_reuse_the_cached_visual_keys():
    """After the prefill, decoding never projects the visual tokens again: with every cross-attention
    key/value projection zeroed, generation and ranking from the prefix are unchanged, while a prefill
    with those params is not."""
    model, params = _model()
    dec = decoding.Decoder(model, pad_id=PAD)
    imgs = tiny.images(2, 2)
    imask = jnp.array([[True, True], [True, False]])
    toks, tmask = decoding.left_pad(ROWS_A, 8, PAD)
    visual = dec.encode(params, imgs)
    broken = jax.tree_util.tree_map_with_path(
        lambda path, x: jnp.zeros_like(x)
        if path[0].key == "xattn" and any(getattr(k, "key", "") in ("key", "value") for k in path) else x, params)
    prefix = dec.prefill(params, toks, tmask, visual, imask)
    gen = decoding.GenerationConfig(max_new_tokens=STEPS, num_beams=3, banned_ids=(IMG, ))
    a = jax.device_get(dec.generate_from(params, prefix, gen))
    b = jax.device_get(dec.generate_from(broken, prefix, gen))
    np.testing.assert_array_equal(a["tokens"], b["tokens"])
    np.testing.assert_array_equal(a["scores"], b["scores"])
    ctoks, cmask = decoding.right_pad(CANDS, 3, PAD)
    np.testing.assert_array_equal(np.asarray(dec.rank_from(params, prefix, ctoks, cmask)),
                                  np.asarray(dec.rank_from(broken, prefix, ctoks, cmask)))
    c = jax.device_get(dec.generate_from(broken, dec.prefill(broken, toks, tmask, visual, imask), gen))
    assert not np.allclose(c["scores"], a["scores"])  # the zeroed projections do matter where they are used
