"""Checksums of a step checkpoint's arrays, recorded at save and checked after every restore (Orbax keeps none
of the data itself: see the package docstring)."""

from __future__ import annotations

import os
from typing import Any, Mapping

import jax
import numpy as np

CHECKSUM_ALGORITHM = "flamingo_jax.checkpoint.checksums/1: uint32 sum and (2i+1)-weighted sum of the words"


class ChecksumMismatch(RuntimeError):
    """A restored array whose checksum differs from the one recorded at save: the files changed (damage)."""


_M = 1 << 32


def _words(block: np.ndarray) -> np.ndarray:
    """An array's bits as unsigned words: 1-, 2- and 4-byte elements as themselves, 8-byte ones as a trailing
    axis of two uint32 words."""
    block = np.ascontiguousarray(block)
    if block.dtype == np.bool_:
        return block.view(np.uint8)
    size = block.dtype.itemsize
    if size in (1, 2, 4):
        return block.view({1: np.uint8, 2: np.uint16, 4: np.uint32}[size])
    return block.view(np.uint32).reshape(*block.shape, size // 4)


def _block_sums(w: np.ndarray, offsets: tuple, strides: tuple) -> tuple[int, int]:
    """(sum of the words, sum of (2g+1) x word) mod 2^32 of a block of words whose element l sits at global
    row-major index g = sum_a (offsets[a] + l_a) * strides[a]: with s1 the block's sum and m_a its marginal
    sums along axis a, the weighted sum is s1 + 2 sum_a strides[a] (offsets[a] s1 + sum_l l m_a[l]), so it
    takes one reduction per axis (uint32 arithmetic wraps, i.e. is exact mod 2^32)."""
    if w.size == 0:
        return 0, 0
    if w.ndim == 0:
        v = int(w) % _M
        return v, v
    marginals = [w.sum(axis=tuple(i for i in range(w.ndim) if i != a), dtype=np.uint32) for a in range(w.ndim)]
    s1 = int(marginals[0].sum(dtype=np.uint32))
    s2 = s1
    for a, m in enumerate(marginals):
        inner = int((m * np.arange(m.shape[0], dtype=np.uint32)).sum(dtype=np.uint32))
        s2 += 2 * strides[a] * (offsets[a] * s1 + inner)
    return s1 % _M, s2 % _M


def _array_sums(x: Any) -> tuple[int, int]:
    """This process's part of an array's two sums: each addressable shard once (replica 0), at its offset."""
    if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        x = jax.random.key_data(x)
    if isinstance(x, jax.Array):
        blocks = [(shard.data, tuple(sl.start or 0 for sl in shard.index)) for shard in x.addressable_shards
                  if shard.replica_id == 0]
    else:
        x = np.asarray(x)
        blocks = [(x, (0, ) * x.ndim)]
    s1 = s2 = 0
    for data, offsets in blocks:
        w = _words(np.asarray(jax.device_get(data)))  # explicit: one shard at a time
        shape = tuple(x.shape) + w.shape[len(x.shape):]
        offsets = offsets + (0, ) * (w.ndim - len(offsets))
        strides = tuple(int(np.prod(shape[a + 1:], dtype=np.int64)) % _M for a in range(len(shape)))
        a, b = _block_sums(w, offsets, strides)
        s1, s2 = (s1 + a) % _M, (s2 + b) % _M
    return s1, s2


def checksums(tree: Any) -> dict[str, str]:
    """{leaf path: 16 hex digits} of every array of `tree`: the sum of its words and the sum of (2i+1) x word
    i, both mod 2^32, i the row-major index of the word in the whole array.

    Fletcher's idea (J. Fletcher, "An Arithmetic Checksum for Serial Transmissions", IEEE Trans. Commun.
    1982): a plain sum plus a position-weighted one. Every weight is odd, hence invertible mod 2^32, so any
    change confined to one word is always detected; moved or swapped words change the weighted sum. Sums mod
    2^32 do not depend on how the array is split, so each process sums its own shards at their offsets and
    the value is the same on every mesh. Computed on host with numpy (XLA:CPU's integer reductions were ~5x
    slower than numpy's), the leaves in parallel threads (numpy releases the GIL while it reduces)."""
    from concurrent.futures import ThreadPoolExecutor

    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        sums = list(pool.map(lambda kv: _array_sums(kv[1]), flat))
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        with jax.transfer_guard("allow"):  # process_allgather reads its gathered result with np.asarray
            parts = np.asarray(multihost_utils.process_allgather(np.asarray(sums, np.uint32).reshape(-1, 2)))
        sums = [(int(a) % _M, int(b) % _M)
                for a, b in parts.reshape(jax.process_count(), -1, 2).astype(np.uint64).sum(axis=0)]
    return {jax.tree_util.keystr(k): "%08x%08x" % v for (k, _), v in zip(flat, sums)}


def verify_checksums(tree: Any, recorded: Mapping[str, str] | None, partial: bool = False) -> None:
    """ChecksumMismatch naming the arrays whose checksum differs from `recorded` (None: nothing recorded,
    a checkpoint written before checksums existed: accepted). partial: `tree` is part of what was recorded
    (e.g. only the trainable params of a step checkpoint): only its own arrays are compared."""
    if not recorded:
        return
    got = checksums(tree)
    keys = set(got) if partial else set(got) | set(recorded)
    bad = sorted(k for k in keys if got.get(k) != recorded.get(k))
    if bad:
        raise ChecksumMismatch(f"checksum mismatch in {len(bad)} of {len(recorded)} arrays (e.g. {bad[:3]}): "
                               f"the files changed after they were written")
