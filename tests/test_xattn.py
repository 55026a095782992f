"""Cross-attention placement and the per-image masking rule."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flamingo_jax.models.xattn import (GatedCrossAttentionBlock, default_media_index, media_mask, placement,
                                       xattn_config)
from tiny import KEY


def test_placements_of_the_paper_and_openflamingo():
    assert placement(xattn_config(every=1), 24) == tuple(range(24))
    assert placement(xattn_config(every=4), 40) == tuple(range(0, 40, 4))  # 9B: 10 layers
    assert len(placement(xattn_config(every=7), 80)) == 12  # 80B: 12 layers
    assert placement(xattn_config(every=4, offset=3), 8) == (3, 7)  # OpenFlamingo rule
    assert placement(xattn_config(placement="middle"), 24) == (12, )
    assert placement(xattn_config(placement="list", layers=(5, 1)), 24) == (1, 5)
    with pytest.raises(ValueError):
        placement(xattn_config(placement="list", layers=(30, )), 24)


def test_default_media_index_is_inclusive():
    tokens = jnp.array([[5, 5, 9, 5, 5, 9, 5]])  # 9 = <image>
    np.testing.assert_array_equal(default_media_index(tokens, 9), [[0, 0, 1, 1, 1, 2, 2]])


def test_media_mask_previous_and_all_previous():
    idx = jnp.array([[0, 1, 2, 2]])
    present = jnp.array([[True, True, False]])
    prev = media_mask(idx, present, 2, "previous")[0, 0]
    np.testing.assert_array_equal(prev,
                                  [[0, 0, 0, 0, 0, 0], [1, 1, 0, 0, 0, 0], [0, 0, 1, 1, 0, 0], [0, 0, 1, 1, 0, 0]])
    allp = media_mask(jnp.array([[0, 1, 3]]), jnp.array([[True, True, True]]), 1, "all_previous")[0, 0]
    np.testing.assert_array_equal(allp, [[0, 0, 0], [1, 0, 0], [1, 1, 1]])


@pytest.fixture(scope="module")
def block():
    cfg = xattn_config("gated", num_heads=2)
    m = GatedCrossAttentionBlock(cfg, num_heads=2, head_dim=8)
    y = jax.random.normal(jax.random.key(1), (1, 8, 16))
    visual = jax.random.normal(jax.random.key(2), (1, 3 * 4, 24))  # 3 images x 4 latents
    params = m.init(KEY, y, visual, jnp.ones((1, 1, 8, 12), bool))["params"]
    params = jax.tree.map(lambda x: x, params)
    params = {**params, "attn_gate": jnp.array(1.0), "ffw_gate": jnp.array(0.0)}
    xattn_only = jax.jit(
        lambda v, idx, mode: m.apply({"params": params}, y, v, media_mask(idx, jnp.ones((1, 3), bool), 4, mode)) - y,
        static_argnums=2)
    return xattn_only, visual


IDX = jnp.array([[0, 0, 1, 1, 2, 2, 3, 3]])  # two tokens before any image, then two per image


@pytest.mark.parametrize("k", [1, 2, 3])
def test_changing_image_k_changes_only_tokens_mapped_to_it(block, k):
    xattn_only, visual = block
    base = xattn_only(visual, IDX, "previous")
    changed = visual.at[:, (k - 1) * 4:k * 4].add(3.0)
    diff = jnp.abs(xattn_only(changed, IDX, "previous") - base).max(-1)[0]
    np.testing.assert_array_equal(diff > 0, np.asarray(IDX[0] == k))


def test_tokens_before_the_first_image_get_zero_output(block):
    xattn_only, visual = block
    out = xattn_only(visual, IDX, "previous")
    np.testing.assert_array_equal(out[0, :2], 0.0)
    assert float(jnp.abs(out[0, 2:]).min()) > 0


def test_all_previous_mode_sees_every_earlier_image(block):
    xattn_only, visual = block
    base = xattn_only(visual, IDX, "all_previous")
    changed = visual.at[:, 0:4].add(3.0)  # image 1
    diff = jnp.abs(xattn_only(changed, IDX, "all_previous") - base).max(-1)[0]
    np.testing.assert_array_equal(diff > 0, np.asarray(IDX[0] >= 1))
