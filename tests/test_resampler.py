"""Resamplers: output shapes, temporal embeddings and their interpolation, matched parameter budgets."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flamingo_jax.models.resampler import (build_resampler, interpolate_rows, pooling_matrix, resampler_config)
from tiny import KEY


def _init(cfg, feats):
    m = build_resampler(cfg, jnp.float32, jnp.float32)
    return m, nn.meta.unbox(m.init(KEY, feats))


@pytest.mark.parametrize("kind", ["perceiver", "transformer", "mlp"])
def test_output_shape_for_images_and_videos(kind):
    cfg = resampler_config(kind, d_model=16, depth=1, num_heads=2, num_latents=5, max_frames=4)
    feats = jnp.ones((3, 2, 7, 12))  # N=3 videos, F=2 frames, S=7 tokens, Dv=12 (projected to 16)
    m, p = _init(cfg, feats)
    assert m.apply(p, feats).shape == (3, 5, 16)
    # More frames than were trained: the temporal table is interpolated, not an error.
    assert m.apply(p, jnp.ones((1, 6, 7, 12))).shape == (1, 5, 16)


def test_interpolation_keeps_endpoints_and_is_linear():
    table = jnp.array([[0.0, 10.0], [1.0, 20.0], [2.0, 30.0]])
    out = interpolate_rows(table, 5)
    np.testing.assert_allclose(out, [[0, 10], [0.5, 15], [1, 20], [1.5, 25], [2, 30]], atol=1e-6)


def test_time_embeddings_distinguish_frames():
    cfg = resampler_config("perceiver", depth=1, num_heads=2, num_latents=3, max_frames=2, final_norm=False)
    frame = jax.random.normal(jax.random.key(1), (1, 1, 4, 8))
    feats = jnp.concatenate([frame, frame], axis=1)  # the same frame twice
    m, p = _init(cfg, feats)
    swapped = p["params"]["time_embeddings"][::-1]
    p2 = {"params": {**p["params"], "time_embeddings": swapped}}
    # Identical frames + swapped time rows give the same set of tokens: unchanged output ...
    np.testing.assert_allclose(m.apply(p, feats), m.apply(p2, feats), atol=1e-5)
    # ... while changing one frame's time row changes it.
    bump = jax.random.normal(jax.random.key(2), (8, ))  # not a constant: LayerNorm would remove that
    p3 = {"params": {**p["params"], "time_embeddings": p["params"]["time_embeddings"].at[0].add(bump)}}
    assert float(jnp.abs(m.apply(p3, feats) - m.apply(p, feats)).max()) > 1e-4


def test_no_time_embeddings_when_max_frames_is_zero():
    cfg = resampler_config("perceiver", depth=1, num_heads=2, num_latents=3, max_frames=0)
    _, p = _init(cfg, jnp.ones((1, 1, 4, 8)))
    assert "time_embeddings" not in p["params"]


def test_pooling_matrix_rows_average():
    m = pooling_matrix(10, 4)
    np.testing.assert_allclose(m.sum(1), 1.0, rtol=1e-6)
    assert (m > 0).sum(0).min() >= 1  # every input token reaches some output


def test_ablation_resamplers_have_a_similar_parameter_budget():
    feats = jax.ShapeDtypeStruct((1, 1, 100, 1536), jnp.float32)
    counts = {}
    for kind in ("perceiver", "transformer", "mlp"):
        m = build_resampler(resampler_config(kind), jnp.float32, jnp.float32)
        shapes = jax.eval_shape(m.init, KEY, feats)
        counts[kind] = sum(math.prod(x.shape) for x in jax.tree.leaves(nn.meta.unbox(shapes)))
    assert abs(counts["transformer"] / counts["perceiver"] - 1) < 0.01
    assert abs(counts["mlp"] / counts["perceiver"] - 1) < 0.05


def _reference_perceiver(params, feats, c):
    """The perceiver written as the paper and OpenFlamingo write it: latents attend to concat(LN(x), LN(z))
    in every layer, with the latents broadcast to every item first."""

    def ln(x, p):
        mu = x.mean(-1, keepdims=True)
        var = ((x - mu)**2).mean(-1, keepdims=True)
        y = (x - mu) / jnp.sqrt(var + c.norm_eps) * p["scale"]
        return y + p["bias"] if "bias" in p else y

    def dense(x, p, in_dims=1):
        k = p["kernel"]
        return jnp.tensordot(x, k, in_dims) + (p["bias"] if "bias" in p else 0.0)

    n, f, s, d = feats.shape
    x = (feats + params["time_embeddings"][:f][None, :, None]).reshape(n, f * s, d)
    z = jnp.broadcast_to(params["latents"], (n, *params["latents"].shape))
    for i in range(c.depth):
        p = params[f"layers_{i}"]
        zn = ln(z, p["latent_norm"])
        kv = jnp.concatenate([ln(x, p["media_norm"]), zn], axis=1)
        q, k, v = dense(zn, p["attn"]["query"]), dense(kv, p["attn"]["key"]), dense(kv, p["attn"]["value"])
        w = jax.nn.softmax(jnp.einsum("nqhd,nkhd->nhqk", q, k) / q.shape[-1]**0.5, axis=-1)
        z = z + dense(jnp.einsum("nhqk,nkhd->nqhd", w, v), p["attn"]["out"], in_dims=2)
        h = dense(ln(z, p["ffw_norm"]), p["ffw"]["wi"])
        z = z + dense(jnp.square(jax.nn.relu(h)), p["ffw"]["wo"])
    return ln(z, params["final_norm"])


@pytest.mark.parametrize("use_bias", [False, True])
def test_perceiver_with_folded_media_norm_equals_the_textbook_formula(use_bias):
    """The perceiver standardizes the media once and folds each layer's media LayerNorm into its key/value
    projections (no input gradient for the frozen media): same outputs and same gradients as concat(LN(x), LN(z))
    with arbitrary norm scales and offsets."""
    cfg = resampler_config("perceiver", depth=2, num_heads=2, num_latents=3, max_frames=2, use_bias=use_bias)
    feats = jax.random.normal(jax.random.key(3), (2, 2, 5, 8))
    m, p = _init(cfg, feats)
    # Random values for every param (the inits make norms trivial and biases zero).
    leaves, tree = jax.tree.flatten(p)
    keys = jax.random.split(jax.random.key(4), len(leaves))
    p = jax.tree.unflatten(tree, [x + 0.3 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])
    np.testing.assert_allclose(m.apply(p, feats), _reference_perceiver(p["params"], feats, cfg), atol=2e-5)
    ours = jax.grad(lambda q: jnp.sum(jnp.sin(m.apply(q, feats))))(p)
    ref = jax.grad(lambda q: jnp.sum(jnp.sin(_reference_perceiver(q["params"], feats, cfg))))(p)
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(ours), jax.tree.leaves(ref)):
        np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-4, err_msg=jax.tree_util.keystr(path))
