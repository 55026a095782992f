"""Frozen vision encoders: NFNet (the paper's) and CLIP ViT (OpenFlamingo's), both returning patch tokens.

Both take images float32[N, H, W, C] in [0, 1], normalise them with the config's pixel_mean / pixel_std
inside, and return tokens [N, S, D] in the compute dtype:
  NFNet-F6 at 320px: S = 10*10 = 100, D = 1536 (flattened last-stage grid; stride 32).
  ViT-L/14 at 224px: S = 16*16 = 256, D = 1024 (patch tokens, class token dropped).

NFNet follows Brock et al. 2021 ("High-Performance Large-Scale Image Recognition Without Normalization")
and deepmind-research/nfnets: scaled weight-standardised convs, bottleneck blocks with two grouped 3x3 convs
(group width 128), squeeze-excite, alpha = 0.2, beta = 1 / expected_std, SkipInit gains initialised to 0,
average-pool + 1x1 projection shortcuts at transitions, GELU scaled by gamma = 1.7015. Training-only parts
(stochastic depth, dropout, the classifier) are left out: the encoder is frozen here.

Parameter counts (jax.eval_shape, tests/test_vision.py):
  F0: 63.7M (+4.7M final conv +3.1M classifier = 71.5M, the paper's figure);
  F6: 430.6M without the final conv, 435.3M with it (= the Flamingo paper's 435M "vision" figure;
  438.4M with the ImageNet classifier as in Brock et al.). With `final_conv` the tokens are 2x1536 = 3072
  wide; the default (False) keeps D = 1536, the Flamingo resampler width.
  ViT-L/14: 303.2M (open_clip's 304.0M also counts the 1024x768 contrastive projection, unused for tokens).
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from flamingo_jax.models.layers import Dense, FeedForward, activation, logical, norm

Dtype = Any

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Gamma makes act(N(0,1)) unit-variance again (Brock et al. 2021, Appendix D); the nfnets code uses
# jax.nn.gelu's tanh approximation, for which 1.7015 was computed.
NF_GAMMA = {
    "gelu": 1.7015043497085571, "gelu_tanh": 1.7015043497085571, "relu": 1.7139588594436646, "silu": 1.7881293296813965
}

_NFNET_DEPTH = (1, 2, 6, 3)
NFNET_SIZES: dict[str, dict[str, Any]] = {
    **{
        f"F{k - 1}": dict(widths=(256, 512, 1536, 1536), depths=tuple(d * k for d in _NFNET_DEPTH), stem_widths=(16, 32, 64, 128), group_width=128, image_size=320)
        for k in range(1, 8)
    },
    "tiny": dict(widths=(16, 32, 64, 64), depths=(1, 1, 1, 1), stem_widths=(4, 8, 8, 8), group_width=8, image_size=64),
}
VIT_SIZES: dict[str, dict[str, Any]] = {
    "L/14": dict(width=1024, layers=24, heads=16, patch_size=14, image_size=224),
    "B/16": dict(width=768, layers=12, heads=12, patch_size=16, image_size=224),
    "B/32": dict(width=768, layers=12, heads=12, patch_size=32, image_size=224),
    "tiny": dict(width=32, layers=2, heads=2, patch_size=8, image_size=32),
}

# ----------------------------------------------------------------------------------------------- NFNet


def standardize_weight(kernel: jax.Array, gain: jax.Array, eps: float = 1e-4) -> jax.Array:
    """Scaled weight standardisation: per output channel, zero mean and variance 1/fan_in, times `gain`.

    kernel: [kh, kw, c_in/groups, c_out]; gain: [c_out]. Computed in float32 whatever the param dtype.
    """
    w = kernel.astype(jnp.float32)
    mean = jnp.mean(w, axis=(0, 1, 2), keepdims=True)
    var = jnp.var(w, axis=(0, 1, 2), keepdims=True)
    fan_in = math.prod(w.shape[:-1])
    scale = jax.lax.rsqrt(jnp.maximum(var * fan_in, eps)) * gain.astype(jnp.float32)
    return w * scale - mean * scale


class WSConv2D(nn.Module):
    """Conv with scaled weight standardisation, a learnable per-channel gain and a bias (NHWC, SAME).

    x: [N, H, W, C_in] -> [N, ceil(H/stride), ceil(W/stride), features].
    Params: kernel [k, k, C_in/groups, features] (conv_h, conv_w, conv_in, conv_out), gain and bias
    [features] (norm).
    """

    features: int
    kernel_size: int = 1
    stride: int = 1
    groups: int = 1
    eps: float = 1e-4
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c_in, k = x.shape[-1], self.kernel_size
        if c_in % self.groups:
            raise ValueError(f"WSConv2D {self.name}: {c_in} channels do not split into {self.groups} groups")
        kernel = self.param(
            "kernel",
            logical(nn.initializers.variance_scaling(1.0, "fan_in", "normal"),
                    ("conv_h", "conv_w", "conv_in", "conv_out")), (k, k, c_in // self.groups, self.features),
            self.param_dtype)
        gain = self.param("gain", logical(nn.initializers.ones, ("norm", )), (self.features, ), self.param_dtype)
        bias = self.param("bias", logical(nn.initializers.zeros, ("norm", )), (self.features, ), self.param_dtype)
        w = standardize_weight(kernel, gain, self.eps)
        y = jax.lax.conv_general_dilated(x.astype(self.dtype), w.astype(self.dtype),
                                         window_strides=(self.stride, self.stride), padding="SAME",
                                         dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=self.groups)
        return y + bias.astype(self.dtype)


class SqueezeExcite(nn.Module):
    """Channel gates sigmoid(W1 relu(W0 mean_hw(x))): x [N, H, W, C] -> gates [N, 1, 1, C]."""

    ratio: float = 0.5
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = x.shape[-1]
        kw = dict(use_bias=True, dtype=self.dtype, param_dtype=self.param_dtype)
        h = jnp.mean(x.astype(jnp.float32), axis=(1, 2)).astype(self.dtype)
        h = jax.nn.relu(Dense(max(1, int(c * self.ratio)), ("conv_in", "conv_out"), name="fc0", **kw)(h))
        h = Dense(c, ("conv_in", "conv_out"), name="fc1", **kw)(h)
        return jax.nn.sigmoid(h)[:, None, None, :]


class NFBlock(nn.Module):
    """Normaliser-free bottleneck: out = alpha * skip_gain * 2 SE(r) r + shortcut, r = convs(act(x) beta).

    x: [N, H, W, C_in] -> [N, H/stride, W/stride, features]. The shortcut is x itself when the shape is
    kept, else a 1x1 WS conv of (2x2 average-pooled when strided) act(x) * beta. skip_gain starts at 0, so at
    init the block returns its shortcut (sown as intermediates/shortcut).
    """

    features: int
    stride: int = 1
    beta: float = 1.0
    alpha: float = 0.2
    expansion: float = 0.5
    group_width: int = 128
    se_ratio: float = 0.5
    act: str = "gelu_tanh"
    eps: float = 1e-4
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        act = nf_activation(self.act)
        width = int(self.features * self.expansion)
        groups = max(1, width // self.group_width)
        width = groups * self.group_width if width >= self.group_width else width
        conv = lambda f, k=1, s=1, g=1, name=None: WSConv2D(  # noqa: E731
            f, k, s, g, eps=self.eps, dtype=self.dtype, param_dtype=self.param_dtype, name=name)

        out = act(x) * self.beta
        if self.stride > 1:
            shortcut = nn.avg_pool(out, (2, 2), (2, 2), padding="SAME", count_include_pad=False)
            shortcut = conv(self.features, name="conv_shortcut")(shortcut)
        elif x.shape[-1] != self.features:
            shortcut = conv(self.features, name="conv_shortcut")(out)
        else:
            shortcut = x
        self.sow("intermediates", "shortcut", shortcut)

        r = conv(width, name="conv0")(out)
        r = conv(width, 3, self.stride, groups, name="conv1")(act(r))
        r = conv(width, 3, 1, groups, name="conv1b")(act(r))
        r = conv(self.features, name="conv2")(act(r))
        r = 2.0 * SqueezeExcite(self.se_ratio, self.dtype, self.param_dtype, name="se")(r) * r
        skip_gain = self.param("skip_gain", logical(nn.initializers.zeros, ()), (), self.param_dtype)
        return r * (skip_gain.astype(self.dtype) * self.alpha) + shortcut.astype(self.dtype)


def nf_activation(name: str):
    """The activation `name` scaled by its gamma so it preserves unit variance (NF networks)."""
    fn, gamma = activation(name), NF_GAMMA.get(name)
    if gamma is None:
        raise ValueError(f"no NF gamma for activation {name!r}: choose one of {sorted(NF_GAMMA)}")
    return lambda x: fn(x) * gamma


class NFNet(nn.Module):
    """NFNet trunk without classifier: images float32[N, H, W, 3] in [0, 1] -> tokens [N, S, D].

    S = ceil(H/32) * ceil(W/32); D = widths[-1] (x final_conv_mult with `final_conv`).
    Stem: 3x3 s2 -> 3x3 -> 3x3 -> 3x3 s2 (stem_widths), then four stages (widths, depths, strides).
    """

    widths: tuple[int, ...] = (256, 512, 1536, 1536)
    depths: tuple[int, ...] = (1, 2, 6, 3)
    strides: tuple[int, ...] = (1, 2, 2, 2)
    stem_widths: tuple[int, ...] = (16, 32, 64, 128)
    group_width: int = 128
    expansion: float = 0.5
    se_ratio: float = 0.5
    alpha: float = 0.2
    act: str = "gelu_tanh"
    final_conv: bool = False
    final_conv_mult: int = 2
    ws_eps: float = 1e-4
    pixel_mean: tuple[float, ...] = IMAGENET_MEAN
    pixel_std: tuple[float, ...] = IMAGENET_STD
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, images: jax.Array) -> jax.Array:
        act = nf_activation(self.act)
        kw = dict(eps=self.ws_eps, dtype=self.dtype, param_dtype=self.param_dtype)
        x = (images.astype(jnp.float32) - jnp.asarray(self.pixel_mean)) / jnp.asarray(self.pixel_std)
        x = x.astype(self.dtype)
        last = len(self.stem_widths) - 1
        for i, f in enumerate(self.stem_widths):
            x = WSConv2D(f, 3, 2 if i in (0, last) else 1, name=f"stem_conv{i}", **kw)(x)
            if i < last:
                x = act(x)

        expected_std, index = 1.0, 0
        for stage, (width, depth, stride) in enumerate(zip(self.widths, self.depths, self.strides)):
            for b in range(depth):
                x = NFBlock(width, stride if b == 0 else 1, beta=1.0 / expected_std, alpha=self.alpha,
                            expansion=self.expansion, group_width=self.group_width, se_ratio=self.se_ratio,
                            act=self.act, name=f"block{index}", **kw)(x)
                index += 1
                # The first block of a stage resets the variance (its shortcut is normalised) but grows it.
                expected_std = math.sqrt((1.0 if b == 0 else expected_std)**2 + self.alpha**2)
        if self.final_conv:
            x = act(WSConv2D(self.final_conv_mult * x.shape[-1], 1, name="final_conv", **kw)(x))
        n, h, w, d = x.shape
        return x.reshape(n, h * w, d)


# ------------------------------------------------------------------------------------------------- ViT


class ViTAttention(nn.Module):
    """Multi-head self-attention with biases; q/k/v kernels [D, heads, head_dim], out [heads, head_dim, D].

    x: [N, L, D] -> [N, L, D]. Softmax in float32.
    """

    heads: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        d = x.shape[-1]
        if d % self.heads:
            raise ValueError(f"width {d} is not divisible by {self.heads} heads")
        hd = d // self.heads
        kw = dict(use_bias=True, dtype=self.dtype, param_dtype=self.param_dtype)
        q, k, v = (Dense((self.heads, hd), ("embed", "heads", "head_dim"), name=n, **kw)(x)
                   for n in ("query", "key", "value"))
        logits = jnp.einsum("nqhd,nkhd->nhqk", q, k, preferred_element_type=jnp.float32) / math.sqrt(hd)
        probs = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
        o = jnp.einsum("nhqk,nkhd->nqhd", probs, v)
        return Dense(d, ("heads", "head_dim", "embed"), in_dims=2, name="out", **kw)(o)


class ViTBlock(nn.Module):
    """Pre-LN residual block: x + attn(ln_1(x)), then + mlp(ln_2(x)). x: [N, L, D] -> [N, L, D]."""

    heads: int
    mlp_ratio: int = 4
    act: str = "quick_gelu"
    norm_eps: float = 1e-5
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        x = x + ViTAttention(self.heads, name="attn", **kw)(norm("layernorm", eps=self.norm_eps, name="ln_1", **kw)(x))
        h = norm("layernorm", eps=self.norm_eps, name="ln_2", **kw)(x)
        return x + FeedForward(self.mlp_ratio * x.shape[-1], act=self.act, use_bias=True, name="mlp", **kw)(h)


class ViT(nn.Module):
    """CLIP-style ViT: images float32[N, H, W, 3] in [0, 1] -> tokens [N, S, width].

    S = (H/patch) * (W/patch) (+1 with a class token unless drop_class_token). The input size must be the
    configured image_size: position embeddings are learned for that grid.
    """

    width: int = 1024
    layers: int = 24
    heads: int = 16
    patch_size: int = 14
    image_size: int = 224
    mlp_ratio: int = 4
    act: str = "quick_gelu"
    class_token: bool = True
    drop_class_token: bool = True
    ln_post: bool = False
    patch_bias: bool = False
    norm_eps: float = 1e-5
    pixel_mean: tuple[float, ...] = CLIP_MEAN
    pixel_std: tuple[float, ...] = CLIP_STD
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, images: jax.Array) -> jax.Array:
        n, h, w, c = images.shape
        p = self.patch_size
        if h != self.image_size or w != self.image_size:
            raise ValueError(f"ViT expects {self.image_size}x{self.image_size} images, got {h}x{w}")
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        x = (images.astype(jnp.float32) - jnp.asarray(self.pixel_mean)) / jnp.asarray(self.pixel_std)
        # Patchify then a dense layer over (p, p, c): the same as a stride-p conv, as a 2-D matmul.
        x = x.reshape(n, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5).reshape(n, -1, p, p, c)
        x = Dense(self.width, ("conv_h", "conv_w", "conv_in", "conv_out"), in_dims=3, use_bias=self.patch_bias,
                  name="patch_embed", **kw)(x)
        scale = self.width**-0.5
        if self.class_token:
            cls = self.param("class_embedding", logical(nn.initializers.normal(scale), ("embed", )), (self.width, ),
                             self.param_dtype)
            x = jnp.concatenate([jnp.broadcast_to(cls.astype(self.dtype), (n, 1, self.width)), x], axis=1)
        pos = self.param("positional_embedding", logical(nn.initializers.normal(scale), ("positions", "embed")),
                         (x.shape[1], self.width), self.param_dtype)
        x = x + pos.astype(self.dtype)
        x = norm("layernorm", eps=self.norm_eps, name="ln_pre", **kw)(x)
        for i in range(self.layers):
            x = ViTBlock(self.heads, self.mlp_ratio, self.act, self.norm_eps, name=f"block{i}", **kw)(x)
        if self.ln_post:
            x = norm("layernorm", eps=self.norm_eps, name="ln_post", **kw)(x)
        if self.class_token and self.drop_class_token:
            x = x[:, 1:]
        return x


# ---------------------------------------------------------------------------------------------- config


def vision_config(kind: str, size: str, **overrides: Any) -> ml_collections.ConfigDict:
    """Config for `build_vision`: every architecture field resolved from `size`, then `overrides` applied.

    kind 'nfnet': sizes F0..F6, tiny. kind 'vit': sizes L/14, B/16, B/32, tiny. Unknown overrides raise.
    ViT defaults follow open_clip as OpenFlamingo uses it (QuickGELU, class token dropped, no patch bias).
    `ln_post` defaults to False: open_clip < 2.24 returned tokens before ln_post (it normalised only the
    pooled token); >= 2.24 (final_ln_after_pool=False) normalises the tokens too. Match the checkpoint's.
    """
    if kind == "nfnet":
        sizes = NFNET_SIZES
        common = dict(strides=(1, 2, 2, 2), expansion=0.5, se_ratio=0.5, alpha=0.2, act="gelu_tanh", final_conv=False,
                      final_conv_mult=2, ws_eps=1e-4, pixel_mean=IMAGENET_MEAN, pixel_std=IMAGENET_STD)
    elif kind == "vit":
        sizes = VIT_SIZES
        common = dict(mlp_ratio=4, act="quick_gelu", class_token=True, drop_class_token=True, ln_post=False,
                      patch_bias=False, norm_eps=1e-5, pixel_mean=CLIP_MEAN, pixel_std=CLIP_STD)
    else:
        raise ValueError(f"unknown vision kind {kind!r}: use 'nfnet' or 'vit'")
    if size not in sizes:
        raise ValueError(f"unknown {kind} size {size!r}: valid sizes are {list(sizes)}")
    cfg = ml_collections.ConfigDict(dict(kind=kind, size=size, **common, **sizes[size]))
    unknown = set(overrides) - set(cfg.keys())
    if unknown:
        raise ValueError(f"unknown {kind} vision fields {sorted(unknown)}: valid fields are {sorted(cfg.keys())}")
    cfg.update(overrides)
    return cfg


def _fields(cfg: ml_collections.ConfigDict, module: type[nn.Module]) -> dict[str, Any]:
    names = set(module.__dataclass_fields__) - {"parent", "name", "dtype", "param_dtype"}
    return {k: tuple(v) if isinstance(v, (list, tuple)) else v for k, v in cfg.items() if k in names}


def build_vision(cfg: ml_collections.ConfigDict, dtype: Dtype = jnp.float32,
                 param_dtype: Dtype = jnp.float32) -> nn.Module:
    """NFNet or ViT from a `vision_config`; call it on images float32[N, H, W, 3] in [0, 1]."""
    module = {"nfnet": NFNet, "vit": ViT}.get(cfg.kind)
    if module is None:
        raise ValueError(f"unknown vision kind {cfg.kind!r}: use 'nfnet' or 'vit'")
    return module(dtype=dtype, param_dtype=param_dtype, **_fields(cfg, module))


def vision_output_dim(cfg: ml_collections.ConfigDict) -> int:
    """D of the tokens [N, S, D] the encoder returns."""
    if cfg.kind == "nfnet":
        return cfg.widths[-1] * (cfg.final_conv_mult if cfg.final_conv else 1)
    return cfg.width


def vision_num_tokens(cfg: ml_collections.ConfigDict, image_size: int | None = None) -> int:
    """S of the tokens [N, S, D] for square images of `image_size` (default cfg.image_size)."""
    size = image_size or cfg.image_size
    if cfg.kind == "nfnet":
        for s in (2, 2, *cfg.strides):  # SAME padding: each stride-s step gives ceil(size / s)
            size = -(-size // s)
        return size * size
    grid = size // cfg.patch_size
    return grid * grid + (1 if cfg.class_token and not cfg.drop_class_token else 0)
