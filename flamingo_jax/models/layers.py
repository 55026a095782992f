"""Building blocks shared by every model: dense layers, norms, activations, embeddings, and the config
constructors' checked overrides (`config_with`).

Every parameter is created through `nn.with_logical_partitioning`, so each leaf carries logical axis
names from the short vocabulary below; `flamingo_jax.sharding` maps them to mesh axes.

Logical axes:
  embed      model width (LM, resampler, ViT)       mlp        feed-forward hidden width
  heads      attention heads (queries)              kv_heads   key/value heads (GQA/MQA)
  head_dim   per-head width                          vocab      vocabulary rows
  layers     stacked-layer axis (scan over layers)   latents    resampler latent queries
  frames     temporal embedding rows                 positions  learned position rows
  conv_h, conv_w, conv_in, conv_out                  convolution kernels (vision)
  norm       per-channel scales and offsets of norms and gains
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from flamingo_jax.sharding import constrain  # sharding imports nothing of the models

Dtype = jnp.dtype
Initializer = Callable[..., jax.Array]


def logical(init: Initializer, names: Sequence[str | None]) -> Initializer:
    """Wraps an initializer so the parameter it makes carries logical axis `names`."""
    return nn.with_logical_partitioning(init, tuple(names))


def config_with(part: str, defaults: dict, overrides: dict) -> ml_collections.ConfigDict:
    """ConfigDict(defaults) with `overrides` applied. An override of a field that `defaults` lacks raises
    KeyError naming `part` (e.g. 'LM'), so a misspelt field is an error rather than a new, unread one."""
    c = ml_collections.ConfigDict(defaults)
    for key, value in overrides.items():
        if key not in c:
            raise KeyError(f"unknown {part} field {key!r}")
        c[key] = value
    return c


def dtype_of(name: str | Dtype) -> Dtype:
    """'bfloat16' / 'float32' / a dtype -> a jnp dtype."""
    return jnp.dtype(name)


class Dense(nn.Module):
    """A dense layer over the last `in_dims` axes, with any output shape and logical axis names.

    The input is reshaped to 2-D before the matmul: XLA:CPU otherwise materialises transposed copies for
    N-D weight-gradient dots (slower there), and on accelerators it is the same dot.

    x: [..., *in_shape] -> [..., *features]; kernel: [*in_shape, *features] named `axes`.
    """

    features: int | tuple[int, ...]
    axes: tuple[str | None, ...]
    in_dims: int = 1
    use_bias: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    kernel_init: Initializer | None = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        in_shape = x.shape[-self.in_dims:]
        kernel, bias = declare_dense(self, in_shape, self.features, self.axes, self.use_bias, self.param_dtype,
                                     self.kernel_init)
        return project(x, kernel, bias, self.in_dims, self.dtype)


def declare_dense(module: nn.Module, in_shape: tuple[int, ...], features: int | tuple[int, ...],
                  axes: tuple[str | None, ...], use_bias: bool = False, param_dtype: Dtype = jnp.float32,
                  kernel_init: Initializer | None = None) -> tuple[jax.Array, jax.Array | None]:
    """Declares a dense layer's `kernel` [*in_shape, *features] (and `bias` [*features]) as params of `module`,
    named `axes`; returns (kernel, bias or None). `Dense` and `DenseKernel` both declare through it."""
    features = (features, ) if isinstance(features, int) else tuple(features)
    kernel_shape = tuple(in_shape) + features
    if len(axes) != len(kernel_shape):
        raise ValueError(f"Dense {module.name}: axes {axes} do not name kernel {kernel_shape}")
    n = len(in_shape)
    init = kernel_init or nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal", in_axis=tuple(range(n)),
                                                           out_axis=tuple(range(n, len(kernel_shape))))
    kernel = module.param("kernel", logical(init, axes), kernel_shape, param_dtype)
    bias = None
    if use_bias:
        bias = module.param("bias", logical(nn.initializers.zeros, axes[n:]), features, param_dtype)
    return kernel, bias


class DenseKernel(nn.Module):
    """A dense layer's params without the layer: (kernel, bias or None), named as `Dense` names them, for
    layers that use the arrays themselves (e.g. to fold a norm's scale into a projection)."""

    features: int | tuple[int, ...]
    axes: tuple[str | None, ...]
    use_bias: bool = False
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, in_shape: tuple[int, ...]) -> tuple[jax.Array, jax.Array | None]:
        return declare_dense(self, in_shape, self.features, self.axes, self.use_bias, self.param_dtype)


def project(x: jax.Array, kernel: jax.Array, bias: jax.Array | None = None, in_dims: int = 1,
            dtype: Dtype = jnp.float32) -> jax.Array:
    """x [..., *in_shape] @ kernel [*in_shape, *features] (+ bias) -> [..., *features], as a 2-D matmul."""
    in_shape = kernel.shape[:in_dims]
    features = kernel.shape[in_dims:]
    n_in, n_out = math.prod(in_shape), math.prod(features)
    lead = x.shape[:x.ndim - in_dims]
    y = jnp.dot(x.reshape(-1, n_in).astype(dtype), kernel.reshape(n_in, n_out).astype(dtype))
    if bias is not None:
        y = y + bias.reshape(n_out).astype(dtype)
    return y.reshape(*lead, *features)


def norm(kind: str, *, eps: float, use_bias: bool = True, dtype: Dtype = jnp.float32, param_dtype: Dtype = jnp.float32,
         name: str | None = None) -> nn.Module:
    """'layernorm' | 'rmsnorm' over the last axis; statistics in float32 whatever the compute dtype."""
    scale_init = logical(nn.initializers.ones, ("norm", ))
    if kind == "layernorm":
        return nn.LayerNorm(epsilon=eps, use_bias=use_bias, dtype=dtype, param_dtype=param_dtype, scale_init=scale_init,
                            bias_init=logical(nn.initializers.zeros, ("norm", )), name=name)
    if kind == "rmsnorm":
        return nn.RMSNorm(epsilon=eps, dtype=dtype, param_dtype=param_dtype, scale_init=scale_init, name=name)
    raise ValueError(f"unknown norm {kind!r}: use 'layernorm' or 'rmsnorm'")


class NormParams(nn.Module):
    """A LayerNorm's scale and offset [d], declared as `norm('layernorm')` declares them (names, inits, logical
    axes), for layers that apply them themselves: returns (scale, bias or None)."""

    use_bias: bool = True
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, d: int) -> tuple[jax.Array, jax.Array | None]:
        scale = self.param("scale", logical(nn.initializers.ones, ("norm", )), (d, ), self.param_dtype)
        if not self.use_bias:
            return scale, None
        return scale, self.param("bias", logical(nn.initializers.zeros, ("norm", )), (d, ), self.param_dtype)


def standardize(x: jax.Array, eps: float, dtype: Dtype = jnp.float32) -> jax.Array:
    """A LayerNorm without its affine: (x - mean) / sqrt(var + eps) over the last axis, statistics in float32."""
    x32 = x.astype(jnp.float32)
    mean = jnp.mean(x32, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
    return ((x32 - mean) * jax.lax.rsqrt(var + eps)).astype(dtype)


def _squared_relu(x: jax.Array) -> jax.Array:
    return jnp.square(jax.nn.relu(x))


def _quick_gelu(x: jax.Array) -> jax.Array:
    return x * jax.nn.sigmoid(1.702 * x)


ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "quick_gelu": _quick_gelu,
    "relu": jax.nn.relu,
    "sqrelu": _squared_relu,
    "silu": jax.nn.silu,
}


def activation(name: str) -> Callable[[jax.Array], jax.Array]:
    """Activation by name: gelu (exact erf), gelu_tanh, quick_gelu, relu, sqrelu, silu."""
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise ValueError(f"unknown activation {name!r}: choose one of {sorted(ACTIVATIONS)}") from None


class FeedForward(nn.Module):
    """Two-matrix FFW (act(x W1) W2) or gated (SwiGLU-style: act(x Wg) * (x W1) W2).

    x: [..., D] -> [..., D]; hidden width `hidden`.
    """

    hidden: int
    act: str = "gelu"
    gated: bool = False
    use_bias: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        d = x.shape[-1]
        kw = dict(use_bias=self.use_bias, dtype=self.dtype, param_dtype=self.param_dtype)
        h = Dense(self.hidden, ("embed", "mlp"), name="wi", **kw)(x)
        if self.gated:
            h = activation(self.act)(Dense(self.hidden, ("embed", "mlp"), name="wg", **kw)(x)) * h
        else:
            h = activation(self.act)(h)
        if h.ndim == 3:  # [B, L, hidden]: split like wi's columns over `model` (Megatron)
            h = constrain(h, ("act_batch", "act_length", "act_mlp"))
        return Dense(d, ("mlp", "embed"), name="wo", **kw)(h)
