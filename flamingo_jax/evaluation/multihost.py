"""Evaluation across processes: this process's rows of each batch, and results gathered to process 0.

Several processes (jax.distributed) evaluate a cell together on ONE mesh spanning all their devices, so a
model too large for one host is evaluated with its params sharded over every host. Every batch is one SPMD
program over the global batch; the processes split the QUERIES: each prepares only its own (prompts, media)
and puts them into the rows of the global batch its devices hold (`to_global`, i.e.
jax.make_array_from_process_local_data), and reads back only those rows (`to_local`: its addressable
shards, by explicit jax.device_get). Host work (media decoding, prompt building, detokenising) is split
too, and no host ever holds another process's batch rows or the whole param tree.

Gathering to process 0 (`allgather_json`): the outputs are JSON-encoded and exchanged with
multihost_utils.process_allgather rather than through files in the workdir. The processes already run in
lockstep (every batch is a collective program), so a collective costs no extra synchronisation; it needs no
shared filesystem (pod hosts often have only local disks, or write to an object store with eventual
listing), no polling loop and no timeout of our own: a dead process fails the collective through
jax.distributed's heartbeats (flamingo_jax.cluster) instead of leaving process 0 waiting for a file.

Without a mesh spanning processes every function is the single-process identity (one process's rows are the
whole batch).
"""

from __future__ import annotations

import json
from typing import Any

import jax
import numpy as np

from flamingo_jax import sharding


def process_count(mesh: Any) -> int:
    """How many processes the mesh's devices belong to (1 without a mesh)."""
    if mesh is None:
        return 1
    return len({d.process_index for d in mesh.devices.flat})


def local_rows(mesh: Any, global_rows: int) -> int:
    """How many rows of a batch of `global_rows` this process's devices hold (batch split over data x fsdp).

    The queries are split by process, so each row must live on exactly one process: a ValueError when the
    mesh replicates batch rows across processes (e.g. a model axis spanning hosts) or splits them unevenly."""
    n = process_count(mesh)
    if n == 1:
        return global_rows
    held = {
        idx[0].indices(global_rows)[:2]
        for idx in sharding.batch_sharding(mesh, 1).addressable_devices_indices_map((global_rows, )).values()
    }
    rows = sum(b - a for a, b in held)
    if rows * n != global_rows:
        raise ValueError(f"this process holds {rows} of {global_rows} batch rows on a mesh {dict(mesh.shape)} of "
                         f"{n} processes: evaluation splits queries by process, so the batch axes (data x fsdp) "
                         f"must split evenly over processes (keep the model axis within a host, and make the "
                         f"batch size a multiple of data x fsdp)")
    return rows


def to_global(mesh: Any, local: np.ndarray) -> Any:
    """This process's rows [b, ...] -> the global batch [b * processes, ...] split over (data, fsdp): one
    explicit jax.device_put per local device of the rows it holds (JAX's make_array_from_process_local_data
    copies through an internal path that the transfer guard counts as implicit), assembled with
    jax.make_array_from_single_device_arrays. The process's row blocks are filled in row order (to_local reads
    them back in the same order). Without a mesh: the host array, unchanged (the decoder puts it on its
    device)."""
    if mesh is None:
        return local
    local = np.asarray(local)
    shape = (local.shape[0] * process_count(mesh), *local.shape[1:])
    where = sharding.batch_sharding(mesh, local.ndim)
    indices = where.addressable_devices_indices_map(shape)
    offset = _local_offsets({idx[0].indices(shape[0])[:2] for idx in indices.values()})
    arrays = []
    for device, idx in indices.items():
        a, b = idx[0].indices(shape[0])[:2]
        arrays.append(jax.device_put(local[offset[a]:offset[a] + b - a], device))
    return jax.make_array_from_single_device_arrays(shape, where, arrays)


def _local_offsets(blocks: set) -> dict:
    """{global start row: row in this process's array} for this process's row blocks [(start, stop)], in order."""
    out, n = {}, 0
    for a, b in sorted(blocks):
        out[a], n = n, n + b - a
    return out


def to_local(x: Any) -> Any:
    """A batch-split array (or a pytree of them) -> numpy of this process's rows, in row order, read by
    explicit jax.device_get of its addressable shards (replicas along the model axis read once)."""

    def one(a):
        if not isinstance(a, jax.Array) or a.is_fully_addressable:
            return np.asarray(jax.device_get(a))
        blocks = {}
        for s in a.addressable_shards:
            start = s.index[0].indices(a.shape[0])[0] if a.ndim else 0
            if start not in blocks:
                blocks[start] = s.data
        return np.concatenate([np.asarray(jax.device_get(blocks[k])) for k in sorted(blocks)])

    return jax.tree.map(one, x)


def _allgather(x: np.ndarray) -> np.ndarray:
    """process_allgather of a host array (same shape on every process) -> [processes, ...].

    multihost_utils reads its gathered result back with np.asarray, which the transfer guard counts as an
    implicit transfer; this read is exactly the one asked for, so it is allowed here and nowhere else."""
    from jax.experimental import multihost_utils

    with jax.transfer_guard("allow"):
        return np.asarray(multihost_utils.process_allgather(np.asarray(x)))


def allgather_json(obj: Any) -> list:
    """[every process's `obj`] in process order (JSON-encodable objects; [obj] in a single process)."""
    if jax.process_count() == 1:
        return [obj]
    data = np.frombuffer(json.dumps(obj).encode(), np.uint8)
    lengths = _allgather(np.int64(data.size)).reshape(-1)
    padded = np.zeros(int(lengths.max()), np.uint8)
    padded[:data.size] = data
    blobs = _allgather(padded)
    return [json.loads(bytes(b[:n])) for b, n in zip(blobs, lengths)]


def from_process_0(obj: Any) -> Any:
    """Process 0's `obj` on every process (decisions that must be the same everywhere, e.g. whether a cell
    is already done, taken where the results file is written)."""
    return allgather_json(obj)[0]


def maximum(x: int) -> int:
    """The largest `x` over processes (e.g. the prompt length every process pads to)."""
    if jax.process_count() == 1:
        return int(x)
    return int(_allgather(np.int64(x)).max())


def all_true(flag: bool) -> bool:
    """Whether `flag` holds on every process (e.g. every process has a cached file)."""
    if jax.process_count() == 1:
        return bool(flag)
    return bool(_allgather(np.int32(bool(flag))).min())


def gather_rows(x: np.ndarray) -> list[np.ndarray]:
    """[every process's rows x: [n_p, ...]] (n_p may differ by process; trailing shapes must agree)."""
    if jax.process_count() == 1:
        return [np.asarray(x)]
    x = np.asarray(x)
    counts = _allgather(np.int64(x.shape[0])).reshape(-1)
    padded = np.zeros((int(counts.max()), *x.shape[1:]), x.dtype)
    padded[:x.shape[0]] = x
    return [g[:n] for g, n in zip(_allgather(padded), counts)]
