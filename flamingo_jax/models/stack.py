"""Layer stacks stored either per layer or stacked on a leading `layers` axis (scan over layers).

A stack is created by an owner module as one parameter whose value is the param tree of an unbound
template block: `layers_0 ... layers_{n-1}` (per layer: run by a Python loop, faster on CPU) or a single
`layers` tree with a leading axis of size n (lax.scan: compile time flat in depth, for paper-size models).
Applying a layer is `template.apply({'params': p}, ...)`, so the owner decides the order of layers from
different stacks (models/schedule.py: the Flamingo schedule interleaves LM and cross-attention blocks).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import flax.linen as nn
import jax

Params = Any


def _is_box(x: Any) -> bool:
    return isinstance(x, nn.meta.AxisMetadata)


def layer_init(template: nn.Module, dummy_args: Sequence[Any],
               dummy_kwargs: dict | None = None) -> Callable[[jax.Array], Params]:
    """An initializer for one layer's (boxed) param tree."""

    def init(rng: jax.Array) -> Params:
        return template.init(rng, *dummy_args, **(dummy_kwargs or {}))["params"]

    return init


def stacked_init(template: nn.Module, length: int, dummy_args: Sequence[Any],
                 dummy_kwargs: dict | None = None) -> Callable[[jax.Array], Params]:
    """An initializer for `length` independent layers stacked on axis 0 (logical axis 'layers')."""
    one = layer_init(template, dummy_args, dummy_kwargs)

    def init(rng: jax.Array) -> Params:
        tree = jax.vmap(one)(jax.random.split(rng, length))
        return jax.tree.map(lambda b: b.add_axis(0, {nn.PARTITION_NAME: "layers"})
                            if _is_box(b) else b, tree, is_leaf=_is_box)

    return init


def declare(owner: nn.Module, template: nn.Module, length: int, scan: bool, dummy_args: Sequence[Any],
            dummy_kwargs: dict | None = None) -> Params | list[Params]:
    """Declares the stack's params in `owner` (call from setup). Returns the stacked tree or a list."""
    if length == 0:
        return []
    if scan:
        return owner.param("layers", stacked_init(template, length, dummy_args, dummy_kwargs))
    init = layer_init(template, dummy_args, dummy_kwargs)
    return [owner.param(f"layers_{i}", init) for i in range(length)]
