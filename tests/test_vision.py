"""Tests for flamingo_jax.models.vision: shapes, parameter counts, NF invariants, logical axis names, and NFNet
numerics against an independent numpy block and the variance-preserving gamma constants."""

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
    apply = jax.jit(
        functools.partial(
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
    assert vision_num_tokens(cfg) == (64 // 32)**2 and vision_output_dim(cfg) == 64
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
        lambda path, x: jnp.ones_like(x) if "skip_gain" in jax.tree_util.keystr(path) else x, params)
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
        conv = jax.lax.conv_general_dilated(x, standardize_weight(stem["kernel"], stem["gain"]),
                                            (2, 2), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")) + stem["bias"]
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


# NFNet numerics against an independent numpy reimplementation (Brock et al. 2021; the nfnets reference code).

# Gamma: 1 / std(act(z)), z ~ N(0, 1). The nfnets code's constants were estimated from samples: within 1e-3 of the
# exact value (Gauss-Hermite quadrature below), far from any other activation's (gelu 1.70, relu 1.71, silu 1.79).
_NP_ACTS = {
    "relu": lambda x: np.maximum(x, 0.0),
    "gelu_tanh": lambda x: 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x**3))),
    "gelu": lambda x: 0.5 * x * (1.0 + np.vectorize(math.erf)(x / np.sqrt(2.0))),
    "silu": lambda x: x / (1.0 + np.exp(-x)),
}


@pytest.mark.parametrize("name", sorted(_NP_ACTS))
def test_nf_gamma_makes_the_activation_unit_variance(name):
    z, w = np.polynomial.hermite_e.hermegauss(300)
    w = w / np.sqrt(2.0 * np.pi)  # E[f(z)] = sum w f(z) for z ~ N(0, 1)
    y = _NP_ACTS[name](z)
    gamma = 1.0 / np.sqrt(np.sum(w * y * y) - np.sum(w * y)**2)
    np.testing.assert_allclose(vision.NF_GAMMA[name], gamma, rtol=1e-3)
    x = np.linspace(-4.0, 4.0, 33, dtype=np.float32)
    np.testing.assert_allclose(np.asarray(vision.nf_activation(name)(jnp.asarray(x))),
                               _NP_ACTS[name](x.astype(np.float64)) * vision.NF_GAMMA[name], rtol=1e-5, atol=1e-6)


_GAMMA_GELU_TANH = 1.7015043497085571  # the nfnets code's literal for jax.nn.gelu (tanh approximation)


def _np_act(x):
    return _NP_ACTS["gelu_tanh"](x) * _GAMMA_GELU_TANH


def _np_ws_conv(x, p, stride=1, groups=1):
    """Scaled weight standardisation (per output channel: (w - mean) / sqrt(var * fan_in), times gain) and a
    SAME-padded grouped convolution, in float64 numpy."""
    k = np.asarray(p["kernel"], np.float64)
    kh, kw, cin_g, cout = k.shape
    fan_in = kh * kw * cin_g
    w = (k - k.mean(axis=(0, 1, 2))) / np.sqrt(np.maximum(k.var(axis=(0, 1, 2)) * fan_in, 1e-4))
    w = w * np.asarray(p["gain"], np.float64)
    n, h, wd, _ = x.shape
    oh, ow = -(-h // stride), -(-wd // stride)
    ph, pw = max((oh - 1) * stride + kh - h, 0), max((ow - 1) * stride + kw - wd, 0)
    xp = np.pad(x, ((0, 0), (ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0)))
    cout_g = cout // groups
    y = np.zeros((n, oh, ow, cout))
    for g in range(groups):
        xg = xp[..., g * cin_g:(g + 1) * cin_g]
        for dy in range(kh):
            for dx in range(kw):
                patch = xg[:, dy:dy + stride * (oh - 1) + 1:stride, dx:dx + stride * (ow - 1) + 1:stride]
                y[..., g * cout_g:(g + 1) * cout_g] += patch @ w[dy, dx, :, g * cout_g:(g + 1) * cout_g]
    return y + np.asarray(p["bias"], np.float64)


def _np_nf_block(x, p, *, beta, alpha, stride, groups):
    """NFNet block (Brock et al. 2021, Figure 5 / nfnets' NFBlock): h = act(x) * beta; shortcut x (same shape)
    or a 1x1 WS conv of h (2x2 average-pooled when strided); r = conv2(act(conv1b(act(conv1(act(conv0(h)))))));
    r = 2 sigmoid(SE(r)) r; out = shortcut + alpha * skip_gain * r."""
    h = _np_act(x) * beta
    if stride > 1:
        n, hh, ww, c = h.shape
        pooled = h.reshape(n, hh // 2, 2, ww // 2, 2, c).mean(axis=(2, 4))
        shortcut = _np_ws_conv(pooled, p["conv_shortcut"])
    elif "conv_shortcut" in p:
        shortcut = _np_ws_conv(h, p["conv_shortcut"])
    else:
        shortcut = x
    r = _np_ws_conv(h, p["conv0"])
    r = _np_ws_conv(_np_act(r), p["conv1"], stride, groups)
    r = _np_ws_conv(_np_act(r), p["conv1b"], 1, groups)
    r = _np_ws_conv(_np_act(r), p["conv2"])
    se = {k: {n: np.asarray(v, np.float64) for n, v in d.items()} for k, d in p["se"].items()}
    s = np.maximum(r.mean(axis=(1, 2)) @ se["fc0"]["kernel"] + se["fc0"]["bias"], 0.0)
    s = 1.0 / (1.0 + np.exp(-(s @ se["fc1"]["kernel"] + se["fc1"]["bias"])))
    r = 2.0 * s[:, None, None, :] * r
    return shortcut + alpha * float(p["skip_gain"]) * r


def test_nf_blocks_match_an_independent_numpy_block(nfnet_tiny):
    """The tiny NFNet's blocks (SkipInit gains set to 1, so the residual branch counts) against _np_nf_block with
    the paper's constants: alpha 0.2; beta = 1 / expected std, the std being reset to 1 by a stage's first
    block and its variance growing by alpha^2 per block (depths (1, 2, 1, 1): block1 opens the second stage, so
    block2 has beta 1/sqrt(1 + alpha^2); block3 opens the third after two blocks, beta 1/sqrt(1 + 2 alpha^2));
    groups of group_width 8 in the 3x3 convs."""
    cfg, variables, images, apply = nfnet_tiny
    params = nn.unbox(variables["params"])
    params = jax.tree_util.tree_map_with_path(
        lambda path, x: jnp.ones_like(x) if "skip_gain" in jax.tree_util.keystr(path) else x, params)
    _, state = apply({"params": params}, images)  # the same program as test_nf_blocks_return_shortcut_at_init
    inter = state["intermediates"]
    out = lambda i: np.asarray(inter[f"block{i}"]["__call__"][0], np.float64)  # noqa: E731
    p = jax.tree.map(np.asarray, params)
    alpha = 0.2
    for i, beta, stride, groups in [(2, 1 / math.sqrt(1 + alpha**2), 1, 16 // 8),
                                    (3, 1 / math.sqrt(1 + 2 * alpha**2), 2, 32 // 8)]:
        want = _np_nf_block(out(i - 1), p[f"block{i}"], beta=beta, alpha=alpha, stride=stride, groups=groups)
        assert out(i).shape == want.shape
        np.testing.assert_allclose(out(i), want, rtol=1e-4, atol=1e-4 * np.abs(want).max(), err_msg=f"block{i}")
        # the residual branch is a sizeable part of the output (so alpha, SE and beta are all tested)
        assert np.abs(want - np.asarray(inter[f"block{i}"]["shortcut"][0])).max() > 0.05 * np.abs(want).max()
