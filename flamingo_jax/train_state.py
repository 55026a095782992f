"""The train state, built in one place for everyone who needs it: the trainer (concrete arrays in their
shardings), the memory planner and checkpoint sizing (shapes and shardings only, nothing allocated).

    layout = state_layout(config, model, mesh)     # abstract: ShapeDtypeStructs + NamedShardings, and the optimizer
    run = initial_state(config, model, mesh)       # concrete: params initialised straight into those shardings

The train state (train_step.init_state) holds the trainable params, AdamW's state, the step, an rng and the
skipped-update counters; the frozen params live beside it (checkpointed once, flamingo_jax.checkpoint). Shardings
come from the params' logical axes (flamingo_jax.sharding); the optimizer's moments take their param's sharding and
everything else is replicated, so the trainer's jit and the planner's compile see the same layout (big_vision's
train.py likewise shapes the state first with jax.eval_shape and initialises it straight into its shardings).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple, Sequence

import flax.linen as nn
import flax.traverse_util as tu
import jax
import ml_collections
import numpy as np

from flamingo_jax import optim, sharding
from flamingo_jax.train_step import init_state


def dummy_inputs(model_config: ml_collections.ConfigDict) -> tuple:
    """The smallest inputs that trace the model (its params do not depend on their sizes). Host numpy: traced
    as constants, so building params moves nothing to a device (runs under JAX_TRANSFER_GUARD=disallow)."""
    s = model_config.vision.image_size
    return (np.zeros((1, 2), np.int32), np.zeros((1, 1, 1, s, s, 3), np.float32), np.ones((1, 1), bool))


def make_key(seed: int, fold: int | None = None) -> jax.Array:
    """jax.random.key(seed) (folded with `fold`) made inside a jitted program: the seed is a compile-time
    constant, so no host-to-device transfer (jax.random.key(int) outside jit is one, refused under
    JAX_TRANSFER_GUARD=disallow)."""
    if fold is None:
        return jax.jit(jax.random.key, static_argnums=0)(int(seed))
    return jax.jit(lambda: jax.random.fold_in(jax.random.key(int(seed)), int(fold)))()


def abstract_params(model: nn.Module, model_config: ml_collections.ConfigDict,
                    mesh: jax.sharding.Mesh | None) -> tuple[dict, dict | None]:
    """(the param tree as ShapeDtypeStructs, their NamedShardings on `mesh` or None without one): the model's
    init traced, nothing allocated."""
    # the key is made inside the trace: jax.random.key(0) outside would be a host-to-device transfer
    boxed = jax.eval_shape(lambda: model.init(jax.random.key(0), *dummy_inputs(model_config)))["params"]
    return nn.meta.unbox(boxed), (sharding.tree_shardings(boxed, mesh) if mesh is not None else None)


def with_shardings(tree: Any, shardings: Any) -> Any:
    """ShapeDtypeStructs carrying `shardings` (restore and compile targets)."""
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


def param_targets(model: nn.Module, model_config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh) -> dict:
    """The param tree as jax.ShapeDtypeStructs carrying their shardings on `mesh`, from shapes only: restore
    targets (flamingo_jax.checkpoint.restore_params reads each array straight into its sharding)."""
    return with_shardings(*abstract_params(model, model_config, mesh))


def _dict_path(path: Sequence[Any]) -> tuple[str, ...]:
    """The dict keys of a key path (optax state containers in between are skipped)."""
    return tuple(str(k.key) for k in path if isinstance(k, jax.tree_util.DictKey))


def opt_state_shardings(opt_state: Any, trainable_shardings: Any, trainable: Any, replicated: Any) -> Any:
    """Shardings for an (abstract) optimizer state, matched to the params by path and shape.

    Moment trees (Adam's mu, nu) mirror the params: a leaf whose dict path ends with a param's path and
    has its shape takes that param's sharding; counts and the rest are replicated. optax.tree_map_params
    would call the optimizer's init eagerly, which fails for compile-only devices."""
    shards = tu.flatten_dict(trainable_shardings)
    shapes = {k: v.shape for k, v in tu.flatten_dict(trainable).items()}

    def one(path, leaf):
        keys = _dict_path(path)
        for start in range(len(keys)):
            suffix = keys[start:]
            if suffix in shards and shapes[suffix] == getattr(leaf, "shape", None):
                return shards[suffix]
        return replicated

    return jax.tree_util.tree_map_with_path(one, opt_state)


class StateLayout(NamedTuple):
    """A run's state from shapes only. Trees of ShapeDtypeStructs (no sharding on them) and, with a mesh, the
    matching trees of NamedShardings (None without one)."""

    state: dict  # the train state (train_step.init_state): step, trainable, opt_state, rng, counters
    frozen: dict  # the frozen params
    state_shardings: dict | None
    frozen_shardings: dict | None
    tx: Any  # the optimizer (optim.make_optimizer) and its learning-rate schedule
    schedule: Any


def state_layout(config: ml_collections.ConfigDict, model: nn.Module, mesh: jax.sharding.Mesh | None = None, *,
                 params: tuple[dict, dict | None] | None = None) -> StateLayout:
    """The train state and frozen params of `config` as shapes, with their shardings on `mesh` (module docstring):
    what the trainer initialises into, the planner compiles against and checkpoint_bytes counts. params:
    abstract_params' (shapes, shardings) when the caller already traced the model's init."""
    params, param_sh = params or abstract_params(model, config.model, mesh)
    trainable, frozen = optim.partition(params, config.trainable)
    tx, schedule = optim.make_optimizer(config.optimizer, trainable, config.total_steps)
    state = jax.eval_shape(lambda t: init_state(t, tx, jax.random.key(0)), trainable)
    state_sh = frozen_sh = None
    if mesh is not None:
        trainable_sh, frozen_sh = optim.partition(param_sh, config.trainable)
        rep = sharding.replicated(mesh)
        state_sh = {k: rep for k in state}
        state_sh["trainable"] = trainable_sh
        state_sh["opt_state"] = opt_state_shardings(state["opt_state"], trainable_sh, trainable, rep)
    return StateLayout(state, frozen, state_sh, frozen_sh, tx, schedule)


def init_params(model: nn.Module, model_config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh, rng: jax.Array,
                skip: tuple[str, ...] = ()) -> tuple[dict, dict, dict]:
    """Params initialised straight into their shardings, never whole on one host.

    Subtrees named in `skip` (to be loaded from pretrained files) are not initialised at all: the jitted
    init only returns the others, so XLA drops their initialisers. Returns (params, shardings, abstract
    params as ShapeDtypeStructs)."""
    inputs = dummy_inputs(model_config)
    abstract, shardings = abstract_params(model, model_config, mesh)
    keep = {k: v for k, v in shardings.items() if k not in skip}

    def init(r):
        params = nn.meta.unbox(model.init(r, *inputs))["params"]
        return {k: v for k, v in params.items() if k not in skip}

    return jax.jit(init, out_shardings=keep)(rng), shardings, abstract


def load_pretrained(config: ml_collections.ConfigDict, shardings: dict, abstract: dict) -> dict:
    """Frozen subtrees from converted checkpoints (config.pretrained.<subtree> = path), restored straight into
    their shardings and the configured param dtype. A checkpoint whose shapes differ from the model's
    (e.g. config.model.lm not taken from the converted config) is an error naming both."""
    out = {}
    for name, path in config.pretrained.items():
        if not path:
            continue
        from flamingo_jax.convert import load_converted  # only needed with pretrained weights

        dtype = jax.tree.leaves(abstract[name])[0].dtype
        subtree, _ = load_converted(path, shardings=shardings[name], dtype=dtype)
        want = jax.tree.map(lambda x: x.shape, abstract[name])
        got = jax.tree.map(lambda x: x.shape, subtree)
        if want != got:
            raise ValueError(f"pretrained {name} at {path} does not match config.model.{name}: use the config "
                             f"written by flamingo_jax.convert ({path}/config.json)")
        out[name] = subtree
    return out


class InitialRun(NamedTuple):
    """initial_state's result: a fresh run's train state, its frozen params, the optimizer and its schedule, and
    the pretrained subtrees it loaded (to pass on to another seed's initial_state: one load for every seed)."""

    state: dict
    frozen: dict
    tx: Any
    schedule: Any
    pretrained: dict


def initial_state(config: ml_collections.ConfigDict, model: nn.Module, mesh: jax.sharding.Mesh,
                  pretrained: dict | None = None) -> InitialRun:
    """The state of a fresh run of config.seed: params initialised from jax.random.key(config.seed) (the
    config.pretrained subtrees loaded instead, or taken from `pretrained` when given), split into trainable
    and frozen; the train state holds the trainable params, AdamW's state and the rng fold_in(key, 1), created
    in state_layout's shardings."""
    rng = make_key(config.seed)
    pretrained_names = tuple(k for k, v in config.pretrained.items() if v)
    params, shardings, abstract = init_params(model, config.model, mesh, rng, skip=pretrained_names)
    layout = state_layout(config, model, mesh, params=(abstract, shardings))  # the init traced once, above
    if pretrained is None:
        pretrained = load_pretrained(config, shardings, abstract)
    params.update(pretrained)
    trainable, frozen = optim.partition(params, config.trainable)
    tx = layout.tx
    state = jax.jit(lambda t, r: init_state(t, tx, r),
                    out_shardings=layout.state_shardings)(trainable, make_key(config.seed, fold=1))
    return InitialRun(state, frozen, tx, layout.schedule, pretrained)


def tree_bytes(tree: Any) -> int:
    """Bytes of a tree of arrays or ShapeDtypeStructs."""
    return sum(int(math.prod(x.shape)) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))


def checkpoint_bytes(config: ml_collections.ConfigDict) -> dict:
    """Bytes of one step checkpoint (trainable + optimizer state + counters, as flamingo_jax.checkpoint stores
    them) versus the full tree (the same plus every frozen param), from shapes only."""
    from flamingo_jax import models
    from flamingo_jax.checkpoint import storable

    layout = state_layout(config, models.build(config.model))
    state = jax.eval_shape(storable, layout.state)
    return {
        "step_checkpoint": tree_bytes(state),
        "trainable_params": tree_bytes(state["trainable"]),
        "optimizer_state": tree_bytes(state["opt_state"]),
        "frozen_params": tree_bytes(layout.frozen),
        "full_tree": tree_bytes(state) + tree_bytes(layout.frozen),
    }
