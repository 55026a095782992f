"""Tests for flamingo_jax.models.vision: shapes, parameter counts, NF invariants, logical axis names."""

from __future__ import annotations

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flamingo_jax.models import vision
from flamingo_jax.models.vision import (NFBlock, WSConv2D, build_vision, standardize_weight, vision_config,
                                        vision_num_tokens, vision_output_dim)


KEY = jax.random.key(0, impl="unsafe_rbg")  # threefry init compiles 3-7x slower on XLA:CPU


def _count(cfg, image_size: int | None = None) -> int:
    """Parameter count from shapes only (jax.eval_shape: nothing is allocated)."""
    size = image_size or cfg.image_size
    shapes = jax.eval_shape(build_vision(cfg).init, KEY, jnp.zeros((1, size, size, 3)))
    return sum(math.prod(x.shape) for x in jax.tree_util.tree_leaves(nn.unbox(shapes)))


def _images(cfg) -> jax.Array:
    return jax.random.uniform(jax.random.PRNGKey(1), (2, cfg.image_size, cfg.image_size, 3))


@pytest.fixture(scope="module")
def nfnet_tiny():
    """Tiny NFNet with an identity block (block2), its boxed variables, and one jitted apply that returns
    (tokens, intermediates: each block's sown shortcut and every block/conv output)."""
    cfg = vision_config("nfnet", "tiny", depths=(1, 2, 1, 1))
    model = build_vision(cfg)
    images = _images(cfg)
    variables = jax.jit(model.init)(KEY, images)  # boxed: LogicallyPartitioned leaves
    apply = jax.jit(functools.partial(
        model.apply, mutable=["intermediates"],
        capture_intermediates=lambda mdl, method: isinstance(mdl, (NFBlock, WSConv2D)) and method == "__call__"))
    return cfg, variables, images, apply


@pytest.fixture(scope="module")
def vit_tiny():
    cfg = vision_config("vit", "tiny")
    model = build_vision(cfg)
    images = _images(cfg)
    variables = jax.jit(model.init)(KEY, images)
    return cfg, variables, images, jax.jit(model.apply)


def test_nfnet_tiny_output_shape(nfnet_tiny):
    cfg, variables, images, apply = nfnet_tiny
    out, _ = apply({"params": nn.unbox(variables["params"])}, images)
    assert vision_num_tokens(cfg) == (64 // 32) ** 2 and vision_output_dim(cfg) == 64
    assert out.shape == (2, 4, 64) and out.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(out))) and float(jnp.std(out)) > 0


def test_nf_blocks_return_shortcut_at_init(nfnet_tiny):
    """SkipInit: skip_gain = 0 at init, so every block returns its shortcut; the identity block returns
    its input unchanged. With gains of 1 the residual branch contributes."""
    _, variables, images, apply = nfnet_tiny
    params = nn.unbox(variables["params"])
    _, state = apply({"params": params}, images)
    inter = state["intermediates"]
    for i in range(5):
        block = inter[f"block{i}"]
        assert float(params[f"block{i}"]["skip_gain"]) == 0.0
        np.testing.assert_array_equal(block["__call__"][0], block["shortcut"][0])
    np.testing.assert_array_equal(inter["block2"]["__call__"][0], inter["block1"]["__call__"][0])

    params = jax.tree_util.tree_map_with_path(
        lambda path, x: jnp.ones_like(x) if "skip_gain" in jax.tree_util.keystr(path) else x,
        params)
    _, state = apply({"params": params}, images)  # same tree and shapes: no recompilation
    for i in range(5):
        block = state["intermediates"][f"block{i}"]
        assert float(jnp.max(jnp.abs(block["__call__"][0] - block["shortcut"][0]))) > 1e-3


def test_ws_conv_standardises(nfnet_tiny):
    """The effective kernel has zero mean and variance 1/fan_in per output channel (times the gain), and
    WSConv2D convolves with exactly that kernel."""
    cfg, variables, images, apply = nfnet_tiny
    params = nn.unbox(variables["params"])
    raw = 3.0 * np.random.default_rng(0).normal(size=(3, 3, 2, 6)) + np.arange(6.0)  # far from standard
    gain = jnp.arange(1.0, 7.0)

    @jax.jit
    def expected(images, stem):  # one compilation instead of one per eager op
        x = (images - jnp.asarray(cfg.pixel_mean)) / jnp.asarray(cfg.pixel_std)
        conv = jax.lax.conv_general_dilated(x, standardize_weight(stem["kernel"], stem["gain"]), (2, 2), "SAME",
                                            dimension_numbers=("NHWC", "HWIO", "NHWC")) + stem["bias"]
        return standardize_weight(raw, jnp.ones(6)), standardize_weight(raw, gain), conv

    w, w_gain, want = map(np.asarray, expected(images, params["stem_conv0"]))
    np.testing.assert_allclose(w.mean(axis=(0, 1, 2)), 0.0, atol=1e-6)
    np.testing.assert_allclose(w.var(axis=(0, 1, 2)) * (3 * 3 * 2), 1.0, rtol=1e-4)
    np.testing.assert_allclose(w_gain, w * np.asarray(gain), rtol=1e-5, atol=1e-6)
    _, state = apply({"params": params}, images)
    np.testing.assert_allclose(state["intermediates"]["stem_conv0"]["__call__"][0], want, rtol=1e-4, atol=1e-5)


def test_vit_tiny_output_and_class_token(vit_tiny):
    """32px / patch 8 -> 16 patch tokens; keeping the class token adds exactly one leading token."""
    cfg, variables, images, apply = vit_tiny
    out = apply(variables, images)
    assert vision_num_tokens(cfg) == 16 and vision_output_dim(cfg) == 32
    assert out.shape == (2, 16, 32) and out.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(out)))
    keep_cfg = vision_config("vit", "tiny", drop_class_token=False)
    kept = jax.jit(build_vision(keep_cfg).apply)(variables, images)
    assert vision_num_tokens(keep_cfg) == 17 and kept.shape == (2, 17, 32)
    np.testing.assert_allclose(kept[:, 1:], out, atol=1e-6)


def test_vit_bfloat16_compute(vit_tiny):
    cfg, variables, images, _ = vit_tiny
    out = jax.jit(build_vision(cfg, dtype=jnp.bfloat16).apply)(variables, images)
    assert out.dtype == jnp.bfloat16 and out.shape == (2, 16, 32)
    assert all(x.dtype == jnp.float32 for x in jax.tree_util.tree_leaves(nn.unbox(variables)))


@pytest.mark.parametrize("which", ["nfnet", "vit"])
def test_logical_axis_names(which, request):
    """Every parameter is boxed with logical names, one per dimension, from the layers.py vocabulary."""
    variables = request.getfixturevalue(f"{which}_tiny")[1]
    vocab = {"embed", "mlp", "heads", "head_dim", "positions", "conv_h", "conv_w", "conv_in", "conv_out", "norm"}
    leaves = jax.tree_util.tree_leaves(variables["params"], is_leaf=lambda x: isinstance(x, nn.Partitioned))
    assert leaves
    for leaf in leaves:
        assert isinstance(leaf, nn.LogicallyPartitioned), type(leaf)
        assert len(leaf.names) == leaf.value.ndim, (leaf.names, leaf.value.shape)
        assert set(leaf.names) <= vocab, leaf.names


# Published counts. Brock et al. 2021 Table 3 gives NFNet params with the ImageNet head: F0 71.5M, F6 438.4M
# (one decimal, i.e. +-0.05M). Our trunk has no classifier (3072*1000 + 1000) and by default no final conv
# (1536 -> 3072 1x1 WS conv: kernel + gain + bias), so add them back. The tolerance 0.3% covers the rounding
# of the published figure and nothing more: a missing SE layer or conv1b would be off by > 2%.
HEAD = 3072 * 1000 + 1000


@pytest.mark.parametrize("size,published", [("F0", 71.5e6), ("F6", 438.4e6)])
def test_nfnet_param_count(size, published):
    cfg = vision_config("nfnet", size, final_conv=True)
    n = _count(cfg, image_size=32)  # NFNet params do not depend on the image size
    assert n + HEAD == pytest.approx(published, rel=3e-3)
    if size == "F0":  # the default drops the final 1536 -> 3072 conv (kernel, gain, bias)
        assert _count(vision_config("nfnet", size), image_size=32) == n - (1536 * 3072 + 2 * 3072)
    if size == "F6":  # the Flamingo paper's 435M vision encoder = F6 with its final conv, minus the head
        assert n == pytest.approx(435e6, rel=3e-3)


def test_vit_l14_param_count():
    """open_clip ViT-L-14 visual has 303,966,208 params, including the 1024x768 projection (786,432) and
    ln_post (2,048), neither of which we create by default: exact match expected."""
    cfg = vision_config("vit", "L/14")
    assert vision_num_tokens(cfg) == 256 and vision_output_dim(cfg) == 1024
    assert _count(cfg) == 303_966_208 - 1024 * 768 - 2 * 1024
    assert _count(vision_config("vit", "tiny", ln_post=True)) == _count(vision_config("vit", "tiny")) + 2 * 32


def test_config_errors_and_overrides():
    with pytest.raises(ValueError, match="F0"):
        vision_config("nfnet", "F9")
    with pytest.raises(ValueError, match="L/14"):
        vision_config("vit", "H/14")
    with pytest.raises(ValueError, match="nfnet"):
        vision_config("resnet", "50")
    with pytest.raises(ValueError, match="unknown"):
        vision_config("vit", "tiny", not_a_field=1)
    cfg = vision_config("nfnet", "F6")
    assert vision_num_tokens(cfg) == 100 and vision_output_dim(cfg) == 1536
    assert cfg.depths == (7, 14, 42, 21)
    assert vision_output_dim(vision_config("nfnet", "F6", final_conv=True)) == 3072
    assert vision_config("vit", "B/16", layers=3).layers == 3
    assert vision.NFNET_SIZES["F3"]["depths"] == (4, 8, 24, 12)
