"""Device mesh from config, the logical-axis rules table, and shardings for any param tree or batch.

Mesh axes: `data` (pure data parallelism), `fsdp` (data parallelism with parameters sharded, ZeRO-3 style)
and `model` (Megatron-style tensor parallelism). Batches shard over (data, fsdp). Parameters map their
logical axis names (flamingo_jax.models.layers) through RULES; a dimension that the mesh axis does not divide
stays replicated rather than failing, so tiny models run on any mesh.

Activations: the models name the axes of their main activations (`constrain(x, ("act_batch", "act_length",
"act_embed"))`, MaxText's and t5x's nn.with_logical_constraint) and ACTIVATION_RULES maps those names, so XLA
does not have to guess the layout of the residual stream, attention heads, FFW hidden, visual features and
latents. The constraints apply only inside `activation_sharding(mesh)` (entered by the jitted functions of
the trainer and the planner while they trace); elsewhere `constrain` returns its input unchanged.
"""

from __future__ import annotations

import contextlib
import math
import threading
from typing import Any, Callable, Iterator, Sequence

import flax.linen as nn
import jax
import ml_collections
from jax.experimental import mesh_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "model")
BATCH_AXES = ("data", "fsdp")

# logical name -> mesh axis (None: replicated). One small table, as in t5x.
RULES: tuple[tuple[str, str | None], ...] = (
    ("embed", "fsdp"),
    ("mlp", "model"),
    ("heads", "model"),
    ("kv_heads", "model"),
    ("vocab", "model"),
    ("head_dim", None),
    ("layers", None),
    ("latents", None),
    ("frames", None),
    ("positions", None),
    ("norm", None),
    ("conv_h", None),
    ("conv_w", None),
    ("conv_in", None),
    ("conv_out", None),
)

# Activation logical name -> mesh axes, beside the param rules (activation names are distinct from param
# names because the same width is laid out differently: the `embed` rows of a weight shard over fsdp, while
# the residual stream's width stays whole). Megatron-style tensor parallelism: the batch is split over the
# data-parallel axes; the residual stream is replicated over `model`, each model shard computing its heads
# and FFW columns (split over `model` like their weights) from all of it; no sequence parallelism.
ACTIVATION_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    ("act_batch", BATCH_AXES),  # examples (images x frames for the vision tower, B x T for the resampler)
    ("act_length", None),  # text tokens, patches, visual tokens of all a sample's images
    ("act_embed", None),  # model width of the LM, cross-attention, resampler and vision tower
    ("act_heads", "model"),  # query heads
    ("act_kv_heads", "model"),  # key / value heads
    ("act_mlp", "model"),  # FFW hidden width
    ("act_latents", None),  # the resampler's latent queries
)


class MeshError(ValueError):
    """The requested mesh does not fit the devices."""


def mesh_shape(mesh_config: ml_collections.ConfigDict | dict, num_devices: int) -> tuple[int, int, int]:
    """(data, fsdp, model) sizes; one axis may be -1 meaning 'the rest of the devices'."""
    sizes = [int(mesh_config[a]) for a in MESH_AXES]
    if sizes.count(-1) > 1:
        raise MeshError(f"mesh {dict(zip(MESH_AXES, sizes))}: at most one axis may be -1")
    known = math.prod(s for s in sizes if s != -1)
    if any(s == 0 or s < -1 for s in sizes) or num_devices % known:
        raise MeshError(f"mesh {dict(zip(MESH_AXES, sizes))} does not fit {num_devices} devices: "
                        f"set config.mesh so that data*fsdp*model == {num_devices}")
    sizes = [num_devices // known if s == -1 else s for s in sizes]
    if math.prod(sizes) != num_devices:
        raise MeshError(f"mesh {dict(zip(MESH_AXES, sizes))} uses {math.prod(sizes)} devices but "
                        f"{num_devices} are present: set config.mesh so that data*fsdp*model == {num_devices}")
    return tuple(sizes)


def dcn_shape(mesh_config: ml_collections.ConfigDict | dict, sizes: Sequence[int]) -> tuple[int, int, int]:
    """(data, fsdp, model) counts of slices (granules across the slow network) from mesh_config.dcn; all 1
    when it is absent. Each whole-mesh size must be a multiple of its dcn count."""
    dcn = mesh_config.get("dcn") if hasattr(mesh_config, "get") else None
    counts = tuple(int(dcn.get(a, 1)) if dcn else 1 for a in MESH_AXES)
    bad = [a for a, n, c in zip(MESH_AXES, sizes, counts) if c < 1 or n % c]
    if bad:
        raise MeshError(f"mesh {dict(zip(MESH_AXES, sizes))} with dcn {dict(zip(MESH_AXES, counts))}: each "
                        f"config.mesh size must be a multiple of its config.mesh.dcn count ({', '.join(bad)})")
    return counts


def _granules(devices: Sequence[Any]) -> tuple[str, int]:
    """How the devices split across the slow network: ('slice_index', n) when they span several slices
    (multi-slice TPU), else ('process_index', number of processes)."""
    slices = {getattr(d, "slice_index", 0) for d in devices}
    if len(slices) > 1:
        return "slice_index", len(slices)
    return "process_index", len({d.process_index for d in devices})


def make_mesh(mesh_config: ml_collections.ConfigDict | dict, devices: Sequence[Any] | None = None) -> Mesh:
    """A Mesh over all (or the given) devices with axes (data, fsdp, model), laid out on the interconnect.

    One slice: jax.make_mesh (topology-aware on TPU: the ICI torus; on GPU ordered by device id). Several
    slices (config.mesh.dcn, e.g. dcn.data=2 for data parallelism across two slices): the per-slice mesh
    (the sizes divided by the dcn counts) within each slice and the dcn counts across them,
    mesh_utils.create_hybrid_device_mesh; devices without a slice_index (GPU clusters, CPU) take each
    process as a slice. A shape the devices cannot form is a MeshError; config.mesh.allow_split_physical_axes
    (default False) lets an axis take part of a torus dimension."""
    devices = list(jax.devices() if devices is None else devices)
    shape = mesh_shape(mesh_config, len(devices))
    dcn = dcn_shape(mesh_config, shape)
    auto = (AxisType.Auto, ) * len(MESH_AXES)  # shardings as given (jax.make_mesh's default is Explicit)
    split = bool(mesh_config.get("allow_split_physical_axes", False))
    if math.prod(dcn) == 1:
        attr, n = _granules(devices)
        if attr == "slice_index" and n > 1:
            raise MeshError(f"the {len(devices)} devices span {n} slices: set config.mesh.dcn (e.g. "
                            f"--config.mesh.dcn.data={n}) so that the mesh splits across them")
        try:
            if split:
                return Mesh(mesh_utils.create_device_mesh(shape, devices, allow_split_physical_axes=True), MESH_AXES,
                            axis_types=auto)
            return jax.make_mesh(shape, MESH_AXES, axis_types=auto, devices=devices)
        except (ValueError, NotImplementedError) as e:  # e.g. a TPU torus that this shape would have to split
            raise MeshError(f"mesh {dict(zip(MESH_AXES, shape))} cannot be laid out on the "
                            f"{devices[0].device_kind} devices ({_one_line(e)}); choose sizes that are products "
                            f"of the torus axes or set config.mesh.allow_split_physical_axes=True") from None
    ici = tuple(n // c for n, c in zip(shape, dcn))
    attr, n = _granules(devices)
    if n != math.prod(dcn):
        raise MeshError(
            f"config.mesh.dcn {dict(zip(MESH_AXES, dcn))} asks for {math.prod(dcn)} slices but the "
            f"{len(devices)} devices span {n} {'slices' if attr == 'slice_index' else 'processes'}: set config.mesh.dcn "
            f"to match")
    try:
        grid = mesh_utils.create_hybrid_device_mesh(ici, dcn, devices, process_is_granule=attr == "process_index",
                                                    allow_split_physical_axes=split)
    except (ValueError, NotImplementedError) as e:
        raise MeshError(f"mesh {dict(zip(MESH_AXES, shape))} = per slice {dict(zip(MESH_AXES, ici))} x dcn "
                        f"{dict(zip(MESH_AXES, dcn))} cannot be laid out on these devices: {_one_line(e)}") from None
    return Mesh(grid, MESH_AXES, axis_types=auto)


def _one_line(e: Exception) -> str:
    return " ".join(str(e).split())


def spec_for(names: Sequence[str | None], shape: Sequence[int], mesh: Mesh,
             rules: Sequence[tuple[str, str | None]] = RULES) -> P:
    """PartitionSpec of one array from its logical names; non-dividing or repeated mesh axes replicate."""
    table = dict(rules)
    used: set[str] = set()
    out = []
    for name, dim in zip(names, shape):
        axis = table.get(name) if name is not None else None
        if axis is not None and (axis in used or dim % mesh.shape[axis]):
            axis = None
        if axis is not None and mesh.shape[axis] == 1:
            axis = None
        if axis is not None:
            used.add(axis)
        out.append(axis)
    return P(*out)


def _is_box(x: Any) -> bool:
    return isinstance(x, nn.meta.AxisMetadata)


def tree_shardings(boxed_tree: Any, mesh: Mesh, rules=RULES) -> Any:
    """NamedShardings for a tree whose leaves are LogicallyPartitioned boxes (values may be abstract).

    Returns the UNBOXED structure (plain tree of NamedSharding), matching nn.meta.unbox(boxed_tree)."""

    def one(x):
        if _is_box(x):
            value = x.unbox()
            return NamedSharding(mesh, spec_for(x.names, value.shape, mesh, rules))
        return NamedSharding(mesh, P())

    return jax.tree.map(one, boxed_tree, is_leaf=_is_box)


_ACTIVE = threading.local()  # the mesh of the innermost activation_sharding on this thread (None: off)


@contextlib.contextmanager
def activation_sharding(mesh: Mesh | None, rules=ACTIVATION_RULES) -> Iterator[None]:
    """Turns the models' activation constraints on for `mesh` (off again on exit; None: off within).

    Enter it inside the function that jit traces (see `with_activation_sharding`): the constraints become
    part of that trace, never of a cached trace made elsewhere."""
    previous = getattr(_ACTIVE, "mesh", None)
    _ACTIVE.mesh = mesh
    try:
        with nn.logical_axis_rules(tuple(rules)):
            yield
    finally:
        _ACTIVE.mesh = previous


def with_activation_sharding(fn: Callable, mesh: Mesh | None) -> Callable:
    """fn that runs (and so traces) inside activation_sharding(mesh); fn itself when mesh is None."""
    if mesh is None:
        return fn

    def wrapped(*args, **kwargs):
        with activation_sharding(mesh):
            return fn(*args, **kwargs)

    return wrapped


def constrain(x: jax.Array, names: Sequence[str | None]) -> jax.Array:
    """x with its layout fixed by the activation rules for its logical axis `names` (one per dim).

    A no-op outside activation_sharding. A dim that its mesh axes do not divide is left to XLA
    (PartitionSpec.UNCONSTRAINED) rather than failing, as the param rules replicate it (tiny models, batch
    1 at decoding)."""
    mesh = getattr(_ACTIVE, "mesh", None)
    if mesh is None:
        return x
    if len(names) != x.ndim:
        raise ValueError(f"constrain: names {tuple(names)} do not name an array of shape {x.shape}")
    table = dict(nn.get_logical_axis_rules())
    fixed = []
    for name, dim in zip(names, x.shape):
        axes = table.get(name) if name is not None else None
        axes = (axes, ) if isinstance(axes, str) else tuple(axes or ())
        fixed.append(P.UNCONSTRAINED if dim % math.prod(mesh.shape[a] for a in axes) else name)
    return nn.with_logical_constraint(x, tuple(fixed), mesh=mesh)


def activation_spec(names: Sequence[str | None], rules=ACTIVATION_RULES) -> P:
    """The PartitionSpec the activation rules give logical `names` (dims that divide), for tests and docs."""
    return P(*nn.logical_to_mesh_axes(tuple(names), tuple(rules)))


def batch_sharding(mesh: Mesh, ndim: int = 1) -> NamedSharding:
    """Leading (batch) axis over (data, fsdp); the rest replicated."""
    return NamedSharding(mesh, P(BATCH_AXES, *([None] * (ndim - 1))))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_size_divides(batch_size: int, mesh: Mesh, name: str) -> None:
    """A one-line error when a global batch cannot be split over the data-parallel devices."""
    n = mesh.shape["data"] * mesh.shape["fsdp"]
    if batch_size % n:
        raise MeshError(f"dataset {name!r}: global batch {batch_size} is not divisible by data*fsdp = {n}; "
                        f"change its batch_size or config.mesh")
