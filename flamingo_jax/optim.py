"""Trainable/frozen partition from config regexes, and AdamW with warmup, clipping and per-group settings.

Params are split by path ('lm/layers_3/attn/query/kernel') into two plain trees: what trains and what is
frozen. The optimizer only ever sees the trainable tree, so frozen params have no optimizer state and no
gradients are computed for them.

config.optimizer fields:
  lr, warmup_steps, schedule ('constant' | 'cosine'), decay_steps (cosine; 0 = config.total_steps),
  end_lr_factor (cosine), b1, b2, eps, weight_decay, no_decay (regexes: weight decay 0; the paper: the
  resampler), clip_norm (global norm; 0 disables), lr_multipliers (list of 'regex=factor', e.g.
  'lm/.*=0.1' for a co-trained LM in Table 10), fused (one elementwise pass per param: see fused_adamw;
  False: the same update as optax.chain(clip_by_global_norm, multi_transform(adamw per group))).
"""

from __future__ import annotations

import re
from typing import Any, Sequence

import flax.traverse_util as tu
import jax
import jax.numpy as jnp
import ml_collections
import optax

Params = Any

DEFAULT_TRAINABLE = ("resampler/.*", "xattn/.*", "new_tokens/.*")


def optimizer_config(**overrides) -> ml_collections.ConfigDict:
    """config.optimizer with the paper's values (Adam betas/eps are not stated: the usual defaults)."""
    c = ml_collections.ConfigDict(
        dict(
            lr=1e-4,
            warmup_steps=5000,
            schedule="constant",
            decay_steps=0,
            end_lr_factor=0.0,
            b1=0.9,
            b2=0.999,
            eps=1e-8,
            weight_decay=0.1,
            no_decay=("resampler/.*", ),
            clip_norm=1.0,
            lr_multipliers=(),
            fused=True,
        ))
    c.update(overrides)
    return c


def path_str(path: tuple) -> str:
    return "/".join(str(k) for k in path)


def _matches(path: str, patterns: Sequence[str]) -> bool:
    return any(re.fullmatch(p, path) for p in patterns)


def partition(params: Params, trainable_patterns: Sequence[str]) -> tuple[Params, Params]:
    """(trainable, frozen): two nested dicts whose leaves are disjoint and together make `params`."""
    flat = tu.flatten_dict(params)
    train = {k: v for k, v in flat.items() if _matches(path_str(k), trainable_patterns)}
    frozen = {k: v for k, v in flat.items() if k not in train}
    if not train:
        raise ValueError(f"no parameter matches config.trainable {list(trainable_patterns)}")
    return tu.unflatten_dict(train), tu.unflatten_dict(frozen)


def merge(trainable: Params, frozen: Params) -> Params:
    """Inverse of partition."""
    flat = dict(tu.flatten_dict(frozen))
    flat.update(tu.flatten_dict(trainable))
    return tu.unflatten_dict(flat)


def _label_tree(params: Params, fn) -> Params:
    flat = tu.flatten_dict(params)
    return tu.unflatten_dict({k: fn(path_str(k)) for k in flat})


def schedule(c: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
    """Linear warmup 0 -> lr over warmup_steps, then constant (the paper) or cosine decay."""
    warm = max(int(c.warmup_steps), 0)
    if c.schedule == "constant":
        after = optax.constant_schedule(c.lr)
    elif c.schedule == "cosine":
        decay = int(c.decay_steps or total_steps) - warm
        after = optax.cosine_decay_schedule(c.lr, max(decay, 1), alpha=c.end_lr_factor)
    else:
        raise ValueError(f"unknown optimizer.schedule {c.schedule!r}: use 'constant' or 'cosine'")
    if warm == 0:
        return after
    return optax.join_schedules([optax.linear_schedule(0.0, c.lr, warm), after], [warm])


def _multipliers(c: ml_collections.ConfigDict) -> list[tuple[str, float]]:
    out = []
    for item in c.lr_multipliers:
        pattern, sep, factor = str(item).rpartition("=")
        if not sep:
            raise ValueError(f"optimizer.lr_multipliers item {item!r} is not 'regex=factor'")
        out.append((pattern, float(factor)))
    return out


def fused_adamw(learning_rate: optax.Schedule, *, b1: float, b2: float, eps: float, clip_norm: float, decay: Params,
                lr_scale: Params) -> optax.GradientTransformation:
    """Global-norm clipping + AdamW with per-leaf weight decay and learning-rate factors, as ONE elementwise
    update per leaf: the same update as optax.chain(clip_by_global_norm(clip_norm), adamw(...)) with
    multi_transform groups, to rounding.

    The chain applies its transforms leaf by leaf in turn and divides every element three times (clipping
    and both bias corrections, which are scalars); here the scalars are combined first, so each element
    takes one square root and one division. On a 136M-param trainable set (the benchmark's wide preset) the
    optimizer was a quarter of the step time. State: optax.ScaleByAdamState (count, mu, nu), moments
    mirroring the params.

    decay, lr_scale: trees like the params with each leaf's weight decay and learning-rate factor (floats).
    """

    def init(params):
        return optax.ScaleByAdamState(count=jnp.zeros([], jnp.int32), mu=optax.tree.zeros_like(params),
                                      nu=optax.tree.zeros_like(params))

    def update(grads, state, params=None):
        if params is None:
            raise ValueError("fused_adamw needs the params (weight decay)")
        count = optax.safe_increment(state.count)
        t = count.astype(jnp.float32)
        lr = learning_rate(state.count)
        scale = jnp.ones([], jnp.float32)
        if clip_norm:
            g_norm = optax.global_norm(grads)
            scale = jnp.where(g_norm < clip_norm, 1.0, clip_norm / g_norm)
        step = lr / (1.0 - b1**t)  # the first moment's bias correction, folded into the step size
        inv_root_bc2 = jax.lax.rsqrt(1.0 - b2**t)  # the second's, folded into the square root

        def leaf(g, m, v, p, wd, factor):
            g = g * scale.astype(g.dtype)
            m = b1 * m + (1.0 - b1) * g
            v = b2 * v + (1.0 - b2) * jnp.square(g)
            u = m * (step * factor) / (jnp.sqrt(v) * inv_root_bc2 + eps)
            if wd:
                u = u + (lr * factor * wd) * p
            return -u.astype(p.dtype), m, v

        out = jax.tree.map(leaf, grads, state.mu, state.nu, params, decay, lr_scale)
        is_leaf = lambda x: isinstance(x, tuple)  # noqa: E731
        pick = lambda i: jax.tree.map(lambda o: o[i], out, is_leaf=is_leaf)  # noqa: E731
        return pick(0), optax.ScaleByAdamState(count=count, mu=pick(1), nu=pick(2))

    return optax.GradientTransformation(init, update)


def make_optimizer(c: ml_collections.ConfigDict, trainable: Params,
                   total_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """AdamW over the trainable tree: global-norm clipping, then per-group AdamW (lr multipliers), weight
    decay off for `no_decay` paths. Returns (transformation, base schedule)."""
    base = schedule(c, total_steps)
    groups = _multipliers(c)

    def factor_of(path: str) -> float:
        for pattern, factor in groups:
            if re.fullmatch(pattern, path):
                return factor
        return 1.0

    if c.get("fused", False):
        decay = _label_tree(trainable, lambda p: 0.0 if _matches(p, c.no_decay) else float(c.weight_decay))
        return fused_adamw(base, b1=c.b1, b2=c.b2, eps=c.eps, clip_norm=float(c.clip_norm or 0.0), decay=decay,
                           lr_scale=_label_tree(trainable, factor_of)), base

    def adamw(factor: float) -> optax.GradientTransformation:
        lr = base if factor == 1.0 else (lambda step: base(step) * factor)

        def decay_mask(params):  # by path; leaves of other groups (optax.MaskedNode) stay empty nodes
            return jax.tree_util.tree_map_with_path(
                lambda path, _: not _matches("/".join(str(k.key) for k in path), c.no_decay), params)

        return optax.adamw(lr, b1=c.b1, b2=c.b2, eps=c.eps, weight_decay=c.weight_decay, mask=decay_mask)

    factors = sorted({factor_of(path_str(k)) for k in tu.flatten_dict(trainable)})
    labels = _label_tree(trainable, lambda p: f"x{factor_of(p)}")
    transforms = {f"x{f}": adamw(f) for f in factors}
    tx = optax.multi_transform(transforms, labels) if len(transforms) > 1 else next(iter(transforms.values()))
    if c.clip_norm:
        tx = optax.chain(optax.clip_by_global_norm(c.clip_norm), tx)
    return tx, base


def tree_bytes(tree: Params) -> int:
    return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree) if hasattr(x, "dtype"))
