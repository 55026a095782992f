"""sharding.make_mesh: topology-aware layouts (jax.make_mesh / mesh_utils), multi-slice meshes from
config.mesh.dcn (create_hybrid_device_mesh), and one-line errors. Stand-in device objects carry the
attributes mesh_utils reads (platform, device_kind, coords, process_index, slice_index), so no compile."""

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
