"""sharding.make_mesh: topology-aware layouts (jax.make_mesh / mesh_utils), multi-slice meshes from
config.mesh.dcn (create_hybrid_device_mesh), and one-line errors. Stand-in device objects carry the
attributes mesh_utils reads (platform, device_kind, coords, process_index, slice_index), so no compile. And the
param sharding rules (sharding.RULES / spec_for): which logical axis goes to which mesh axis."""

import flax.linen as nn
import numpy as np
import pytest

from flamingo_jax import sharding


class Dev:

    def __init__(self, i, process=0, slice_index=None, platform="cpu", kind="cpu", coords=None):
        self.id, self.process_index, self.platform, self.device_kind = i, process, platform, kind
        if slice_index is not None:
            self.slice_index = slice_index
        if coords is not None:
            self.coords, self.core_on_chip = coords, 0

    def __repr__(self):
        return f"Dev({self.id})"


def ids(mesh):
    return [[[d.id for d in row] for row in plane] for plane in mesh.devices]


def tpu_v4_4x4():
    return [Dev(i, platform="tpu", kind="TPU v4", coords=(i % 4, i // 4, 0)) for i in range(16)]


def test_single_slice_follows_the_torus_and_keeps_auto_axes():
    devs = list(reversed(tpu_v4_4x4()))  # the physical layout, not the list order, decides
    mesh = sharding.make_mesh(dict(data=1, fsdp=4, model=4), devs)
    assert mesh.axis_names == sharding.MESH_AXES
    assert all(str(t).endswith("Auto") for t in mesh.axis_types)
    rows = mesh.devices[0]
    assert [[d.coords for d in row] for row in rows] == [[(x, y, 0) for x in range(4)] for y in range(4)]


def test_shapes_the_torus_cannot_form_are_one_line_errors():
    with pytest.raises(sharding.MeshError, match="cannot be laid out on the TPU v4 devices") as e:
        sharding.make_mesh(dict(data=2, fsdp=8, model=1), tpu_v4_4x4())
    assert "\n" not in str(e.value) and "allow_split_physical_axes" in str(e.value)
    mesh = sharding.make_mesh(dict(data=2, fsdp=8, model=1, allow_split_physical_axes=True), tpu_v4_4x4())
    assert dict(mesh.shape) == dict(data=2, fsdp=8, model=1)


def test_dcn_puts_data_parallelism_across_slices():
    devs = [Dev(i, slice_index=i // 4) for i in range(8)]
    with pytest.raises(sharding.MeshError, match="span 2 slices.*mesh.dcn.data=2"):
        sharding.make_mesh(dict(data=-1, fsdp=2, model=2), devs)
    mesh = sharding.make_mesh(dict(data=-1, fsdp=2, model=2, dcn=dict(data=2, fsdp=1, model=1)), devs)
    assert ids(mesh) == [[[0, 1], [2, 3]], [[4, 5], [6, 7]]]  # data index = slice; fsdp x model within it
    assert {d.slice_index for d in mesh.devices[0].flat} == {0} and {d.slice_index for d in mesh.devices[1].flat} == {1}


def test_without_slice_index_each_process_is_a_slice():
    devs = [Dev(i, process=i // 4) for i in range(8)]
    mesh = sharding.make_mesh(dict(data=2, fsdp=4, model=1, dcn=dict(data=2)), devs)
    assert [{d.process_index for d in plane.flat} for plane in mesh.devices] == [{0}, {1}]


def test_dcn_errors_are_one_line():
    devs = [Dev(i, process=i // 4) for i in range(8)]
    with pytest.raises(sharding.MeshError, match="multiple of its config.mesh.dcn count \\(data\\)"):
        sharding.make_mesh(dict(data=1, fsdp=8, model=1, dcn=dict(data=2)), devs)
    with pytest.raises(sharding.MeshError, match="asks for 4 slices but the 8 devices span 2"):
        sharding.make_mesh(dict(data=4, fsdp=2, model=1, dcn=dict(data=4)), devs)
    with pytest.raises(sharding.MeshError, match="does not fit 8 devices"):
        sharding.make_mesh(dict(data=3, fsdp=1, model=1), devs)


def test_param_rules_map_each_logical_axis_to_its_mesh_axis():
    """sharding.RULES as the docs state them: embed over fsdp (ZeRO-3), mlp / heads / kv_heads / vocab over model
    (Megatron), the rest replicated; a mesh axis that does not divide its dimension, is already used by the
    array, or has size 1 replicates. An abstract mesh: spec_for reads only the axis sizes."""
    from jax.sharding import AbstractMesh, NamedSharding, PartitionSpec as P

    mesh = AbstractMesh((1, 2, 4), sharding.MESH_AXES)

    def spec(names, shape, m=mesh):
        return sharding.spec_for(names, shape, m)

    assert spec(("embed", "mlp"), (32, 64)) == P("fsdp", "model")  # FFW in
    assert spec(("mlp", "embed"), (64, 32)) == P("model", "fsdp")  # FFW out
    assert spec(("embed", "heads", "head_dim"), (32, 4, 8)) == P("fsdp", "model", None)  # q
    assert spec(("embed", "kv_heads", "head_dim"), (32, 4, 8)) == P("fsdp", "model", None)  # k, v
    assert spec(("heads", "head_dim", "embed"), (4, 8, 32)) == P("model", None, "fsdp")  # attention out
    assert spec(("vocab", "embed"), (512, 32)) == P("model", "fsdp")  # embedding
    assert spec(("layers", "embed", "mlp"), (3, 32, 64)) == P(None, "fsdp", "model")  # scanned layers
    for name in ("head_dim", "layers", "latents", "frames", "positions", "norm", "conv_h", "conv_w", "conv_in",
                 "conv_out", "unknown_name", None):
        assert spec((name, ), (8, )) == P(None), name
    assert spec(("vocab", "embed"), (42, 32)) == P(None, "fsdp")  # 4 does not divide 42
    assert spec(("embed", "embed"), (32, 32)) == P("fsdp", None)  # fsdp is taken
    assert spec(("heads", "mlp"), (4, 64)) == P("model", None)  # model is taken
    assert spec(("embed", "mlp"), (32, 64), AbstractMesh((8, 1, 1), sharding.MESH_AXES)) == P(None, None)
    # the boxed param tree of a model gets one NamedSharding per leaf by these rules (plain leaves: replicated)
    boxed = {"w": nn.LogicallyPartitioned(np.zeros((32, 64)), ("embed", "mlp")), "b": np.zeros(3)}
    got = sharding.tree_shardings(boxed, mesh)
    assert got["w"] == NamedSharding(mesh, P("fsdp", "model")) and got["b"].spec == P()
