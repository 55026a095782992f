"""The machines a memory plan is made for (flamingo_jax.tools.plan): the --target and --mesh / --batch texts
parsed, and the target's devices: forced host devices, compile-only TPU topologies from the libtpu wheel
(jax.experimental.topologies), or a deviceless CUDA compile from an XLA GPU target description."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

GIB = 1024**3

# Per-chip memory (GiB) and the libtpu topology naming of each TPU generation.
TPU_MEMORY_GIB = {"v4": 32, "v5e": 16, "v5p": 95, "v6e": 32}
TPU_TOPOLOGY = {  # gen -> (libtpu topology prefix, chip_config_name, chips_per_host_bounds)
    "v4": ("v4", "megacore", (2, 2, 1)),
    "v5e": ("v5e", "default", (2, 2, 1)),
    "v5p": ("v5", "megacore", (2, 2, 1)),
    "v6e": ("v6e", "default", (2, 2, 1)),
}
GPU_MEMORY_GIB = {"h100": 80, "h200": 141, "a100": 80, "b200": 180}


class PlanError(RuntimeError):
    """A target that cannot be planned here (bad name, missing optional compiler, too few devices)."""


@dataclass(frozen=True)
class Target:
    """A parsed --target: kind in {cpu, tpu, gpu}, the generation/model and the device grid."""

    kind: str
    name: str = ""
    grid: tuple[int, ...] = ()

    @property
    def num_devices(self) -> int | None:
        return math.prod(self.grid) if self.grid else None

    @property
    def memory_bytes(self) -> int | None:
        if self.kind == "tpu":
            return TPU_MEMORY_GIB[self.name] * GIB
        if self.kind == "gpu":
            return GPU_MEMORY_GIB[self.name] * GIB
        return None


def parse_target(text: str) -> Target:
    """'cpu' | 'tpu:v5e:16x16' | 'gpu:h100:32x8' -> Target. Raises PlanError with the valid forms."""
    if text == "cpu":
        return Target("cpu")
    parts = text.split(":")
    known = {"tpu": TPU_MEMORY_GIB, "gpu": GPU_MEMORY_GIB}
    if len(parts) != 3 or parts[0] not in known or parts[1] not in known[parts[0]] or not re.fullmatch(
            r"\d+(x\d+)*", parts[2]):
        raise PlanError(f"unknown --target {text!r}: use cpu, tpu:<{'|'.join(TPU_MEMORY_GIB)}>:AxB[xC] or "
                        f"gpu:<{'|'.join(GPU_MEMORY_GIB)}>:HOSTSxGPUS (e.g. tpu:v5e:16x16, gpu:h100:32x8)")
    return Target(parts[0], parts[1], tuple(int(x) for x in parts[2].split("x")))


def parse_mesh(text: str) -> dict[str, int]:
    """'data=8,fsdp=4,model=8' -> {'data': 8, 'fsdp': 4, 'model': 8} (missing axes are 1)."""
    out = {"data": 1, "fsdp": 1, "model": 1}
    for item in filter(None, text.split(",")):
        key, sep, value = item.partition("=")
        if not sep or key.strip() not in out:
            raise PlanError(f"bad --mesh item {item!r}: use data=N,fsdp=N,model=N")
        out[key.strip()] = int(value)
    if any(v < 1 for v in out.values()):
        raise PlanError(f"--mesh {text!r}: sizes must be >= 1 (no -1 in a plan)")
    return out


def parse_batch(text: str) -> dict[str, int]:
    """'m3w=64,align=128' -> {'m3w': 64, 'align': 128}."""
    out = {}
    for item in filter(None, text.split(",")):
        key, sep, value = item.partition("=")
        if not sep:
            raise PlanError(f"bad --batch item {item!r}: use dataset=global_batch,...")
        out[key.strip()] = int(value)
    return out


# ------------------------------------------------------------------------------------------- devices


def target_devices(target: Target, count: int, gpu_target_config: str = "") -> list:
    """`count` devices to compile for: forced CPU devices, or compile-only TPU/GPU devices."""
    import jax

    if target.kind == "cpu":
        devices = jax.devices("cpu")
        if len(devices) < count:
            raise PlanError(f"{len(devices)} CPU devices but the mesh needs {count}: set "
                            f"XLA_FLAGS=--xla_force_host_platform_device_count={count} before JAX starts")
        return devices[:count]
    if target.num_devices != count:
        raise PlanError(f"target {target.kind}:{target.name}:{'x'.join(map(str, target.grid))} has "
                        f"{target.num_devices} devices but the mesh uses {count}")
    from jax.experimental import topologies

    if target.kind == "tpu":
        prefix, chip_config, host_bounds = TPU_TOPOLOGY[target.name]
        grid = "x".join(map(str, target.grid))
        try:
            import libtpu  # noqa: F401  (the compile-only TPU compiler)
        except ImportError:
            raise PlanError("TPU targets need the TPU compiler: pip install libtpu") from None
        desc = topologies.get_topology_desc(topology_name=f"{prefix}:{grid}", platform="tpu",
                                            chip_config_name=chip_config, chips_per_host_bounds=host_bounds,
                                            num_slices=1)
        return list(desc.devices)
    try:
        import jax_cuda12_plugin  # noqa: F401
    except ImportError:
        raise PlanError('GPU targets need the CUDA PJRT plugin: pip install "jax[cuda12]"') from None
    if not gpu_target_config:
        raise PlanError("GPU targets need --gpu_target_config FILE (an XLA GpuTargetConfigProto text file, "
                        "e.g. xla/tools/hlo_opt/gpu_specs/h100_sxm.txtpb)")
    with open(gpu_target_config) as f:
        spec = f.read()
    hosts, per_host = (target.grid + (1, ))[:2] if len(target.grid) == 1 else target.grid[-2:]
    desc = topologies.get_topology_desc(topology_name=f"{target.name}", platform="cuda", target_config=spec,
                                        topology=f"1x{hosts}x{per_host}")
    return list(desc.devices)


def target_name(target: Target) -> str:
    return target.kind if target.kind == "cpu" else f"{target.kind}:{target.name}:{'x'.join(map(str, target.grid))}"
