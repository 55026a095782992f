"""Resamplers: output shapes, temporal embeddings and their interpolation, matched parameter budgets."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flamingo_jax.models.resampler import (build_resampler, interpolate_rows, pooling_matrix,
                                           resampler_config)
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
    bump = jax.random.normal(jax.random.key(2), (8,))  # not a constant: LayerNorm would remove that
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
