"""Checkpoints that never lose a step: Orbax step checkpoints of what trains, frozen params stored once.

Layout of a workdir:
  checkpoints/<step>/state/   the train state (flamingo_jax.train_step.init_state): trainable params, optimizer
                              state, step, rng (as raw key data), non-finite counters; Orbax StandardSave
  checkpoints/<step>/data/    the data iterator's state, one small JSON file per process
                              (`process_<i>.json`, from `iterator.get_state()`)
  checkpoints/<step>/meta/    JSON: the config, library versions, the mesh, the frozen fingerprint, the guard's
                              state (flamingo_jax.guard) and a checksum of every array of state/ (checksums)
  frozen/manifest.json        where every frozen subtree comes from and its sha256 (params_fingerprint):
                              {"source": "pretrained", "path", "sha256" (the converted checkpoint's)} for
                              subtrees loaded through config.pretrained, {"source": "workdir", "sha256"}
                              for the others, which are written ONCE to frozen/params/ (Orbax)
  checkpoints_damaged/        step checkpoints that failed to restore, moved aside (never deleted)

Saves are asynchronous (the arrays are copied to host before `save` returns, so the next step may donate
them); a step checkpoint only appears under its final name once every item is written, so a process killed
mid-save leaves a temporary directory that the next run removes. Old steps are deleted only after a newer
one is committed: the newest `checkpoint_keep` plus every `checkpoint_keep_every`-th step are kept.

Restoring targets the CURRENT trainer's state (shapes, dtypes and shardings), so a run may resume on a
different mesh than the one that saved it.

Verified: Orbax stores no checksum of the data (its zarr3 layout puts a crc32c on the shard index only, and
the default zarr2 layout none; zstd frames carry no content checksum), so a flipped byte in a data file can
restore "intact" with a changed value. Each save therefore records two 32-bit sums of every array's words in
the meta item (`checksums`): computed on device (one read of the state, no copy), independent of the mesh,
checked after every restore; a mismatch is damage (moved aside, the previous step restored).

Storage: a failed asynchronous save is raised by check_errors() (the trainer calls it every step) as one
CheckpointError naming the path, the cause and the fix; a save is refused when the filesystem has less free
space than the checkpoint needs, with a warning beforehand when it has less than three times that.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging as pylogging
import errno
import os
import re
import shutil
import signal
import time
from typing import Any, Mapping

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from orbax.checkpoint import checkpoint_managers as policies

STATE, DATA, META = "state", "data", "meta"
_BYTES = "__bytes_base64__"
_TEST_SLOW_SAVE_S = float(os.environ.get("FLAMINGO_JAX_TEST_SLOW_SAVE_S", "0") or 0)
FROZEN_FORMAT = "flamingo_jax.frozen/1"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used: frozen weights that differ, a config that no longer fits, or no
    intact step checkpoint left; or a save that failed."""


class ChecksumMismatch(RuntimeError):
    """A restored array whose checksum differs from the one recorded at save: the files changed (damage)."""


def one_line(e: BaseException, limit: int = 400) -> str:
    """An exception as one readable line: its type and first sentence, without TensorStore's bracketed
    [source locations=...] / [tensorstore_spec=...] / pybind reprs, cut at a word under `limit` characters."""
    text = re.sub(r"\[(source locations|tensorstore_[a-z_]+)(\[\d+\])?='.*?'\]", "", str(e), flags=re.S)
    text = re.sub(r"<[^<>]{0,200} object at 0x[0-9a-f]+>", "<object>", text)
    text = " ".join(text.split())
    if len(text) > limit:
        text = text[:limit].rsplit(" ", 1)[0] + " ..."
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


# ----------------------------------------------------------------------------------------------------------
# Checksums of the step checkpoints' arrays.

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


# ----------------------------------------------------------------------------------------------------------
# The data iterator's state: one JSON file per process (each process reads its own shard of the data).


class DataStateHandler(ocp.JsonCheckpointHandler):
    """Writes `process_<i>.json` on every process (the stock JSON handler only writes on the primary)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)

    async def _save_fn(self, x, directory):
        if _TEST_SLOW_SAVE_S:  # tests: keep the asynchronous commit in flight long enough to kill it there
            import asyncio
            await asyncio.sleep(_TEST_SLOW_SAVE_S)
        (directory / f"process_{jax.process_index()}.json").write_text(
            json.dumps({"process_count": jax.process_count(), "state": x}, default=_json_value))

    def restore(self, directory, item=None, args=None) -> Mapping[str, Any]:
        own = directory / f"process_{jax.process_index()}.json"
        saved = sorted(directory.glob("process_*.json"))
        if not saved:
            raise FileNotFoundError(f"{directory}: no process_*.json")
        if own.exists():
            record = json.loads(own.read_text())
            if record["process_count"] == jax.process_count():
                return _from_json(record["state"])
        states = [json.loads(p.read_text())["state"] for p in saved]
        if all(s == states[0] for s in states):  # e.g. synthetic data: the same on every process
            return _from_json(states[0])
        raise CheckpointError(f"{directory}: the data state was saved by {len(saved)} processes with different "
                              f"positions; resume with the same number of processes ({jax.process_count()} now)")


def _json_value(x: Any) -> Any:
    if isinstance(x, bytes):  # e.g. grain's DataLoader iterator state
        import base64
        return {_BYTES: base64.b64encode(x).decode()}
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    raise TypeError(f"the data iterator's get_state() holds a {type(x).__name__}, which JSON cannot store: "
                    f"return plain ints, floats, strings, lists and dicts")


def _from_json(x: Any) -> Any:
    if isinstance(x, dict):
        if set(x) == {_BYTES}:
            import base64
            return base64.b64decode(x[_BYTES])
        return {k: _from_json(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_from_json(v) for v in x]
    return x


def _barrier(name: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices(name)


@ocp.args.register_with_handler(DataStateHandler, for_save=True)
@dataclasses.dataclass
class DataStateSave(ocp.args.CheckpointArgs):
    item: Mapping[str, Any]


@ocp.args.register_with_handler(DataStateHandler, for_restore=True)
@dataclasses.dataclass
class DataStateRestore(ocp.args.CheckpointArgs):
    item: Any = None


# ----------------------------------------------------------------------------------------------------------
# Frozen params: stored once (or referenced to their converted checkpoint) with a content hash.


def _host(x: Any) -> np.ndarray:
    """One array's whole value on this host, by explicit transfers: a sharded array spanning processes is
    first replicated by a jitted identity (an all-gather over the mesh), then read with jax.device_get."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        replicated = jax.sharding.NamedSharding(x.sharding.mesh, jax.sharding.PartitionSpec())
        x = jax.jit(lambda a: a, out_shardings=replicated)(x).addressable_data(0)
    return np.asarray(jax.device_get(x))


def fingerprint(params: Any) -> str:
    """params_fingerprint (flamingo_jax.convert.store) of a possibly sharded tree, read to host one leaf at a
    time (never the whole tree at once)."""
    from flamingo_jax.convert.store import params_fingerprint
    return params_fingerprint(params, to_host=_host)


def frozen_sources(config: ml_collections.ConfigDict, frozen: dict) -> dict:
    """{subtree: {"source": "pretrained", "path", "sha256"} | {"source": "workdir"}} for the frozen tree."""
    out = {}
    for name in sorted(frozen):
        path = config.pretrained.get(name, "") if "pretrained" in config else ""
        if path:
            from flamingo_jax.convert.store import read_manifest
            path = os.path.abspath(path)
            out[name] = {"source": "pretrained", "path": path, "sha256": read_manifest(path).get("params_sha256", "")}
        else:
            out[name] = {"source": "workdir"}
        out[name]["dtype"] = np.dtype(jax.tree.leaves(frozen[name])[0].dtype).name
    return out


def frozen_fingerprint(manifest: dict) -> str:
    """One hash naming every frozen subtree's content (what step checkpoints record)."""
    import hashlib
    body = {k: v["sha256"] for k, v in sorted(manifest["subtrees"].items())}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def prepare_frozen(workdir: str, config: ml_collections.ConfigDict, frozen: dict) -> tuple[dict, dict]:
    """Writes the frozen params once, or checks (and reloads) them on resume. Returns (frozen, manifest).

    The first call stores the subtrees that no converted checkpoint provides under workdir/frozen/params and
    writes workdir/frozen/manifest.json last (so a run killed before has no manifest and simply redoes it).
    Later calls check that every pretrained subtree still points to a converted checkpoint with the recorded
    sha256, and restore the stored subtrees into the current shardings after checking their hash: any
    difference is a CheckpointError, never a silent mix of weights."""
    root = os.path.join(os.path.abspath(workdir), "frozen")
    manifest_path = os.path.join(root, "manifest.json")
    sources = frozen_sources(config, frozen)
    stored = [k for k, v in sources.items() if v["source"] == "workdir"]
    _barrier("flamingo_jax.checkpoint.frozen.check")  # every process takes the same branch below
    if not os.path.exists(manifest_path):
        for k in stored:
            sources[k]["sha256"] = fingerprint(frozen[k])
        if stored:
            ckptr = ocp.StandardCheckpointer()
            ckptr.save(os.path.join(root, "params"), {k: frozen[k] for k in stored}, force=True)
            ckptr.wait_until_finished()
        manifest = {"format": FROZEN_FORMAT, "subtrees": sources}
        manifest["fingerprint"] = frozen_fingerprint(manifest)
        if jax.process_index() == 0:
            os.makedirs(root, exist_ok=True)
            with open(manifest_path + ".tmp", "w") as f:
                json.dump(manifest, f, indent=1)
            os.replace(manifest_path + ".tmp", manifest_path)
        _barrier("flamingo_jax.checkpoint.frozen.written")
        return frozen, manifest

    with open(manifest_path) as f:
        manifest = json.load(f)
    recorded = manifest["subtrees"]
    fix = f"resume with the config that wrote {workdir}, or start a new --workdir"
    if sorted(recorded) != sorted(sources):
        raise CheckpointError(f"frozen subtrees changed: {workdir} holds {sorted(recorded)}, the config freezes "
                              f"{sorted(sources)} ({fix})")
    for k, now in sources.items():
        was = recorded[k]
        if now["source"] != was["source"] or (now["source"] == "pretrained" and
                                              (now["path"] != was["path"] or now["sha256"] != was["sha256"])):
            raise CheckpointError(
                f"frozen hash mismatch for {k!r}: this run was trained with {_describe(was)}, the config now "
                f"gives {_describe(now)} ({fix})")
    if stored:
        target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                              {k: frozen[k]
                               for k in stored})
        try:
            restored = ocp.StandardCheckpointer().restore(os.path.join(root, "params"), target)
        except Exception as e:  # noqa: BLE001 - any failure to read is a damaged store
            raise CheckpointError(f"{root}/params cannot be read ({one_line(e)}); {fix}") from None
        for k in stored:
            got = fingerprint(restored[k])
            if got != recorded[k]["sha256"]:
                raise CheckpointError(f"frozen hash mismatch for {k!r}: {root}/params has sha256 {got[:12]}..., "
                                      f"the manifest records {recorded[k]['sha256'][:12]}... ({fix})")
        frozen = {**frozen, **restored}
    return frozen, manifest


def _describe(source: dict) -> str:
    if source["source"] == "pretrained":
        return f"the converted checkpoint {source['path']} (sha256 {source['sha256'][:12]}...)"
    return "weights stored in the workdir (no config.pretrained path)"


# ----------------------------------------------------------------------------------------------------------
# Step checkpoints.


def _storable(state: dict) -> dict:
    """The train state with the typed PRNG key as raw key data (what Orbax can write)."""
    return {**state, "rng": jax.random.key_data(state["rng"])}


def _abstract(tree: Any) -> Any:
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)


CHECKSUM_ALGORITHM = "flamingo_jax.checkpoint.checksums/1: uint32 sum and (2i+1)-weighted sum of the words"


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n} B"


def versions() -> dict:
    from importlib import metadata
    out = {}
    for name in ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy", "ml-collections"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = ""
    return out


class _OrbaxFailures(pylogging.Filter):
    """Keeps the exception of the last failed background save that Orbax logged (logging.exception in its
    finalize thread), and keeps those tracebacks (one per failed array write) off the console: the trainer
    reports the failure once, as one line (Checkpoints.check_errors)."""

    def __init__(self):
        super().__init__()
        self.last: BaseException | None = None
        self.logger = pylogging.getLogger("absl")
        self.logger.addFilter(self)

    def filter(self, record: pylogging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[1] is not None and "orbax" in (record.pathname or ""):
            self.last = _root_cause(record.exc_info[1])
            return False
        return True

    def remove(self) -> None:
        self.logger.removeFilter(self)


def _root_cause(e: BaseException) -> BaseException:
    """The innermost exception of a chain (ENOSPC rather than the wrappers around it)."""
    seen = set()
    while id(e) not in seen:
        seen.add(id(e))
        nxt = e.__cause__ or e.__context__
        if nxt is None:
            break
        e = nxt
    return e


@dataclasses.dataclass
class Restored:
    step: int
    state: dict
    data_state: Any
    meta: dict


class Checkpoints:
    """The workdir's step checkpoints (see the module docstring). Cadence from the config:

    checkpoint_every (steps; 0 = never by steps), checkpoint_every_minutes (0 = off), checkpoint_keep (the
    newest K are kept), checkpoint_keep_every (every N-th step is kept for good; 0 = none), checkpoint_async,
    checkpoint_checksums (record and verify the arrays' checksums; default True).
    """

    def __init__(self, workdir: str, config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh | None = None):
        quiet_orbax_info()
        self.workdir = os.path.abspath(workdir)
        self.directory = os.path.join(self.workdir, "checkpoints")
        self.config, self.mesh = config, mesh
        self.every = int(config.get("checkpoint_every", 0))
        self.minutes = float(config.get("checkpoint_every_minutes", 0.0))
        keep = max(int(config.get("checkpoint_keep", 3)), 1)  # the newest intact one is never deleted
        keep_every = int(config.get("checkpoint_keep_every", 0))
        preserve = [policies.LatestN(n=keep)]
        if keep_every > 0:
            preserve.append(policies.EveryNSteps(interval_steps=keep_every))
        self.options = ocp.CheckpointManagerOptions(
            enable_async_checkpointing=bool(config.get("checkpoint_async", True)),
            preservation_policy=policies.AnyPreservationPolicy(preserve), cleanup_tmp_directories=True, create=True)
        self.manager = self._open()
        self.last_save_time = time.monotonic()
        self.frozen_manifest: dict | None = None
        self.pending_step: int | None = None
        self.failed = False
        self.verify = bool(config.get("checkpoint_checksums", True))
        self._failures = _OrbaxFailures()

    def _open(self) -> ocp.CheckpointManager:
        return ocp.CheckpointManager(
            self.directory, options=self.options, item_handlers={
                STATE: ocp.StandardCheckpointHandler(), DATA: DataStateHandler(), META: ocp.JsonCheckpointHandler()
            })

    # -- saving ------------------------------------------------------------------------------------------

    def due(self, step: int) -> bool:
        """Whether the cadence asks for a save after `step` updates (the same answer on every process)."""
        due = bool(self.every) and step % self.every == 0
        if self.minutes > 0 and not due:
            due = time.monotonic() - self.last_save_time >= 60.0 * self.minutes
            if jax.process_count() > 1:  # clocks differ: process 0 decides for everyone
                from jax.experimental import multihost_utils
                due = bool(multihost_utils.broadcast_one_to_all(np.int32(due)))
        return due

    def metadata(self, step: int) -> dict:
        mesh = {} if self.mesh is None else {
            "shape": {k: int(v)
                      for k, v in self.mesh.shape.items()}, "devices": int(self.mesh.devices.size)
        }
        return {
            "step": step, "config": json.loads(self.config.to_json_best_effort()), "versions": versions(), "mesh": mesh,
            "process_count": jax.process_count(), "frozen": self.frozen_manifest or {},
            "frozen_fingerprint": (self.frozen_manifest or
                                   {}).get("fingerprint",
                                           ""), "time": datetime.datetime.now(datetime.timezone.utc).isoformat()
        }

    def save(self, step: int, state: dict, data_state: Any, guard: dict | None = None) -> bool:
        """Starts an asynchronous save of `state` at `step` (returns once the arrays are on host), with the
        checksums of its arrays and `guard` (flamingo_jax.guard.Guard.state_dict) in the meta item."""
        if step in self.manager.all_steps():
            return False
        self.wait()  # the previous save's failure, if any, is reported before this one starts
        self.check_errors()
        storable = _storable(state)
        self._check_space(step, storable)
        meta = {**self.metadata(step), "guard": guard or {}}
        if self.verify:
            meta["checksums"] = {"algorithm": CHECKSUM_ALGORITHM, "arrays": checksums(storable)}
        args = ocp.args.Composite(
            **{STATE: ocp.args.StandardSave(storable), DATA: DataStateSave(data_state), META: ocp.args.JsonSave(meta)})
        self.pending_step = step
        try:
            self.manager.save(step, args=args, force=True)
        except Exception as e:  # noqa: BLE001 - a synchronous failure (e.g. creating the directory)
            raise CheckpointError(self._failure(step, e)) from None
        self.last_save_time = time.monotonic()
        return True

    def _check_space(self, step: int, storable: dict) -> None:
        """CheckpointError when the filesystem says it has less free space than the checkpoint needs; a
        warning when it has less than three times that (the next saves will not fit for long)."""
        need = sum(int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(storable))
        try:
            os.makedirs(self.directory, exist_ok=True)
            free = shutil.disk_usage(self.directory).free
        except OSError:  # the filesystem cannot say (e.g. some object stores)
            return
        if free < need * 1.05 + (64 << 10):  # the arrays, plus room for the small metadata files
            raise CheckpointError(
                f"not enough free space to save checkpoint {step} in {self.directory}: it needs about "
                f"{_size(need)}, {_size(free)} are free; free some space or move --workdir, then rerun the "
                f"same command (the last checkpoint, step {self._last_step()}, is untouched)")
        if free < 3 * need:
            logging.warning("only %s free in %s: room for %d more checkpoints of %s", _size(free), self.directory,
                            free // max(need, 1), _size(need))

    def _last_step(self, failed: int | None = None) -> str:
        """The newest step on disk under its final name, but the one being (or failing to be) saved."""
        failed = self.pending_step if failed is None else failed
        steps = [
            s for s in self.manager.all_steps() if s != failed and os.path.isdir(os.path.join(self.directory, str(s)))
        ]
        return str(max(steps)) if steps else "none"

    def _failure(self, step: int, e: BaseException) -> str:
        path = os.path.join(self.directory, str(step))
        text = str(e)
        if getattr(e, "errno", None) == errno.ENOSPC or "No space left" in text or "ENOSPC" in text:
            fix = "the disk is full: free some space or move --workdir"
        elif isinstance(e, PermissionError) or "Permission denied" in text:
            fix = f"{self.directory} is not writable: fix its permissions or move --workdir"
        else:
            fix = "check the storage under --workdir"
        return (f"saving checkpoint {step} to {path} failed ({one_line(e)}); {fix}, then rerun the same command "
                f"to resume from the last checkpoint, step {self._last_step(step)} (untouched)")

    def check_errors(self) -> None:
        """CheckpointError (one line: the path, the cause, the fix) if an asynchronous save failed; cheap
        (no waiting), called by the trainer after every step.

        Orbax's CheckpointManager catches a failed background save itself (its finalize thread logs the
        traceback and skips the step), so a failure is what it leaves behind: a save no longer in progress
        whose step directory never appeared under its final name. The cause is the exception Orbax logged
        (captured by _OrbaxFailures, which also keeps its traceback off the console)."""
        pending = getattr(self, "pending_step", None)
        try:
            self.manager.check_for_errors()
        except Exception as e:  # noqa: BLE001 - whatever the background save raised
            self.failed = True
            raise CheckpointError(self._failure(-1 if pending is None else pending, e)) from None
        if pending is None or self.manager.is_saving_in_progress():
            return
        self.pending_step = None
        if not os.path.isdir(os.path.join(self.directory, str(pending))):
            self.failed = True
            # Orbax marks the save finished before its finalize thread logs the exception: give the log record
            # time to arrive, so the report names the real cause (e.g. ENOSPC) rather than only its effect. On a
            # loaded machine 2 s was too short (a fresh-clone CI with load ~8 reported the effect twice); the wait
            # ends as soon as the record arrives and only runs after a failed save.
            deadline = time.monotonic() + 30.0
            while self._failures.last is None and time.monotonic() < deadline:
                time.sleep(0.02)
            cause = self._failures.last or RuntimeError("the save ended without writing the step directory")
            raise CheckpointError(self._failure(pending, cause))

    def wait(self) -> None:
        """Waits for the asynchronous save; CheckpointError if it failed."""
        try:
            self.manager.wait_until_finished()
        except Exception as e:  # noqa: BLE001
            self.failed = True
            raise CheckpointError(self._failure(getattr(self, "pending_step", -1), e)) from None
        self.check_errors()

    def close(self) -> None:
        try:
            self.manager.close()
        except Exception:  # noqa: BLE001 - already reported by check_errors / wait
            if not getattr(self, "failed", False):
                raise
        finally:
            self._failures.remove()

    # -- restoring ---------------------------------------------------------------------------------------

    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def restore(self, target_state: dict, step: int | None = None) -> Restored | None:
        """The newest intact checkpoint (or `step`), restored into target_state's shapes and shardings.

        A checkpoint that fails to restore (killed mid-save, truncated or missing files) is skipped with a
        warning and moved to checkpoints_damaged/ so that later saves of its step cannot collide with it.
        None when the workdir holds no checkpoint; CheckpointError when none of them is intact."""
        steps = self.steps() if step is None else [step]
        if not steps:
            return None
        target = _abstract(_storable(target_state))
        impl = jax.random.key_impl(target_state["rng"])
        damaged = []
        for s in reversed(steps):
            try:
                self._check_structure(s, target)
                out = self.manager.restore(
                    s, args=ocp.args.Composite(**{
                        STATE: ocp.args.StandardRestore(target), DATA: DataStateRestore(), META: ocp.args.JsonRestore()
                    }))
                meta = out[META]
                self._check_meta(s, meta)
                if self.verify:
                    verify_checksums(out[STATE], (meta.get("checksums") or {}).get("arrays"))
            except CheckpointError:
                raise
            except Exception as e:  # noqa: BLE001 - any failure to read means a damaged checkpoint
                logging.warning("checkpoint %d in %s is damaged (%s); trying an older one", s, self.directory,
                                one_line(e))
                damaged.append(s)
                continue
            if damaged:
                self._move_aside(damaged)
                logging.warning("resuming from step %d: damaged newer checkpoints %s were moved to %s", s, damaged,
                                os.path.join(self.workdir, "checkpoints_damaged"))
            state = {**out[STATE], "rng": jax.random.wrap_key_data(out[STATE]["rng"], impl=impl)}
            if "nonfinite_run" in state:  # a resume starts with no streak (healthy checkpoints hold 0 anyway)
                state["nonfinite_run"] = state["nonfinite_run"] * 0
            return Restored(step=s, state=state, data_state=out[DATA], meta=meta)
        raise CheckpointError(f"no intact checkpoint in {self.directory}: steps {damaged} all failed to restore "
                              f"(see the warnings); move them away to start over")

    def _check_structure(self, step: int, target: dict) -> None:
        """A checkpoint whose arrays are readable but differ from the current state's (another model, another
        trainable set) is a config error, not damage: say so rather than skipping it."""
        try:
            saved = self.manager.item_metadata(step)[STATE]
            saved = getattr(saved, "tree", saved)
        except Exception:  # noqa: BLE001 - unreadable metadata: the restore below reports the damage
            return
        if not isinstance(saved, Mapping) or "trainable" not in saved:
            return

        def paths(tree):
            flat = jax.tree_util.tree_flatten_with_path(tree)[0]
            return {jax.tree_util.keystr(k): (tuple(v.shape), np.dtype(v.dtype).name) for k, v in flat}

        def counts(tree):
            return sorted((tuple(v.shape), np.dtype(v.dtype).name) for v in jax.tree.leaves(tree))

        if paths(saved["trainable"]) != paths(target["trainable"]) or counts(saved) != counts(target):
            ours, theirs = paths(target["trainable"]), paths(saved["trainable"])
            diff = sorted(set(ours.items()) ^ set(theirs.items()))[:4]
            raise CheckpointError(
                f"checkpoint {step} in {self.directory} does not fit the current config (trainable params or "
                f"optimizer state differ, e.g. {diff}); resume with the config that wrote it (its meta/metadata "
                f"holds it) or start a new --workdir")

    def _check_meta(self, step: int, meta: dict) -> None:
        if self.frozen_manifest is not None:
            check_frozen_fingerprint(step, meta, self.frozen_manifest, self.workdir)

    def _move_aside(self, steps: list[int]) -> None:
        if jax.process_index() == 0:
            aside = os.path.join(self.workdir, "checkpoints_damaged")
            os.makedirs(aside, exist_ok=True)
            stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
            for s in steps:
                src = os.path.join(self.directory, str(s))
                if os.path.exists(src):
                    shutil.move(src, os.path.join(aside, f"{s}-{stamp}"))
        _barrier("flamingo_jax.checkpoint.move_aside")
        self.manager.close()
        self.manager = self._open()


def check_frozen_fingerprint(step: int, meta: Mapping[str, Any], manifest: Mapping[str, Any], workdir: str) -> None:
    """CheckpointError unless step checkpoint `step` (its meta item) was trained with the frozen params that
    workdir/frozen holds (its manifest): the trainer's resume and the evaluation's restore check the same."""
    if meta.get("frozen_fingerprint") != manifest["fingerprint"]:
        raise CheckpointError(f"frozen hash mismatch: checkpoint {step} was trained with frozen params "
                              f"{str(meta.get('frozen_fingerprint'))[:12]}..., {workdir}/frozen holds "
                              f"{manifest['fingerprint'][:12]}...; use the workdir the checkpoint came from")


def load_params(config: ml_collections.ConfigDict | None, workdir: str, step: int | None = None) -> tuple[dict, int]:
    """(whole param tree as host numpy, step) of a training workdir's newest intact step checkpoint (or
    `step`), read without building the model (flamingo_jax.tools.export.read_workdir): for tools and small
    models. Evaluation restores into shardings instead (restore_params), so no host holds the whole tree.
    `config` is accepted for symmetry with the trainer and not needed (the run's own is in the meta item)."""
    del config
    from flamingo_jax.tools.export import read_workdir

    params, _, step, _ = read_workdir(workdir, step)
    return params, step


def restore_params(workdir: str, config: ml_collections.ConfigDict, target: Any, step: int | None = None, *,
                   verify: bool = True) -> tuple[dict, int]:
    """(params, step): a training workdir's newest intact step checkpoint (or `step`) restored straight into
    the shardings of `target`, the whole param tree as jax.ShapeDtypeStructs with shardings
    (flamingo_jax.train.param_targets). Orbax reads, on every process, only the array slices that its devices
    hold (ArrayRestoreArgs built from the target's shardings), so no host ever holds the whole tree.

    Trainable params (config.trainable) come from the step checkpoint's train state, restored alone
    (partial restore: the optimizer state is never read); frozen params from the workdir's frozen store
    (frozen/params) or the converted checkpoints its manifest references, into the same shardings. Checks,
    as the trainer's resume makes them: the step's frozen fingerprint is the store's; with `verify`, the
    trainable arrays' checksums recorded at save (per shard, on device hosts) and the stored frozen
    subtrees' sha256 (read to host one leaf at a time) and the referenced converted checkpoints' recorded
    sha256. A step that cannot be read is skipped for an older one with a warning (nothing is moved: the
    evaluation never changes a training workdir). CheckpointError when no step is intact.

    Cost of `verify` on the stored frozen subtrees: the sha256 needs each array's bytes in order, so each
    frozen array is, one at a time, replicated over the mesh and read to host (as the trainer's resume does
    in prepare_frozen); where the largest frozen array does not fit one device, pass verify=False (the
    fingerprint check above still runs)."""
    from flamingo_jax import optim

    workdir = os.path.abspath(workdir)
    manifest_path = os.path.join(workdir, "frozen", "manifest.json")
    if not os.path.exists(manifest_path):
        raise CheckpointError(f"{workdir} holds no training checkpoint (no frozen/manifest.json): pass the "
                              f"--workdir of a flamingo_jax.train run")
    with open(manifest_path) as f:
        manifest = json.load(f)
    trainable_target, frozen_target = optim.partition(target, config.trainable)
    if sorted(frozen_target) != sorted(manifest["subtrees"]):
        raise CheckpointError(f"frozen subtrees differ: {workdir} holds {sorted(manifest['subtrees'])}, the config "
                              f"freezes {sorted(frozen_target)}; evaluate with the config that trained it")
    trainable, step = _restore_trainable(workdir, {"trainable": trainable_target}, manifest, step, verify)
    return optim.merge(trainable, _restore_frozen(workdir, target, frozen_target, manifest, verify)), step


class _OrbaxInfoOff(pylogging.Filter):
    """Orbax logs dozens of INFO lines per save and restore (threads, throughput, renames) through absl; a run
    shows its own progress line, so Orbax's records below WARNING are dropped (its warnings and errors stay).
    ORBAX_INFO=1 keeps them."""

    def filter(self, record: pylogging.LogRecord) -> bool:
        return record.levelno >= pylogging.WARNING or f"{os.sep}orbax{os.sep}" not in record.pathname


_ORBAX_INFO_OFF = _OrbaxInfoOff()


def quiet_orbax_info() -> None:
    """Installs _OrbaxInfoOff on absl's logger and its handlers (once; a no-op with ORBAX_INFO=1)."""
    if os.environ.get("ORBAX_INFO") == "1":
        return
    absl_logger = pylogging.getLogger("absl")
    for target in [absl_logger, *absl_logger.handlers]:
        if _ORBAX_INFO_OFF not in target.filters:
            target.addFilter(_ORBAX_INFO_OFF)


quiet_orbax_info()  # at import: Orbax handlers log INFO from their constructors, before any manager exists


class _DropReadOnlyNotice(pylogging.Filter):
    """Orbax logs 'Given directory is read only=DIR' as a warning for every read-only CheckpointManager;
    reading a finished run's checkpoints is the normal case of one, so that line is dropped."""

    def filter(self, record: pylogging.LogRecord) -> bool:
        return not str(record.msg).startswith("Given directory is read only=")


def read_only_manager(directory: str, item_handlers: dict) -> ocp.CheckpointManager:
    """A CheckpointManager that reads and never writes, created without Orbax's warnings (the options a
    read-only manager forces are given explicitly, so none is 'set' with a warning)."""
    quiet_orbax_info()
    options = ocp.CheckpointManagerOptions(read_only=True, create=False, save_interval_steps=0)
    drop = _DropReadOnlyNotice()
    absl_logger = pylogging.getLogger("absl")
    absl_logger.addFilter(drop)
    try:
        return ocp.CheckpointManager(directory, options=options, item_handlers=item_handlers)
    finally:
        absl_logger.removeFilter(drop)


def _restore_trainable(workdir: str, target: dict, manifest: dict, step: int | None, verify: bool) -> tuple[dict, int]:
    """target {'trainable': abstract tree} -> (trainable params in their shardings, step)."""
    manager = read_only_manager(os.path.join(workdir, "checkpoints"),
                                {STATE: ocp.PyTreeCheckpointHandler(), META: ocp.JsonCheckpointHandler()})
    try:
        steps = sorted(manager.all_steps()) if step is None else [step]
        if not steps:
            raise CheckpointError(f"{workdir} holds no step checkpoint (expected {workdir}/checkpoints/<step>)")
        args = ocp.args.Composite(
            **{
                STATE: ocp.args.PyTreeRestore(item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(
                    target), partial_restore=True), META: ocp.args.JsonRestore()
            })
        for s in reversed(steps):
            try:
                out = manager.restore(s, args=args)
            except Exception as e:  # noqa: BLE001 - unreadable: an older step may be intact
                if step is not None:
                    raise CheckpointError(f"checkpoint {s} of {workdir} cannot be read ({one_line(e)})") from None
                logging.warning("checkpoint %d of %s cannot be read (%s); trying an older one", s, workdir, one_line(e))
                continue
            meta = out[META]
            check_frozen_fingerprint(s, meta, manifest, workdir)
            if verify:
                verify_checksums(out[STATE], (meta.get("checksums") or {}).get("arrays"), partial=True)
            return out[STATE]["trainable"], s
        raise CheckpointError(f"no intact checkpoint in {workdir}/checkpoints (steps {steps}; see the warnings)")
    finally:
        manager.close()


def _restore_frozen(workdir: str, target: dict, frozen_target: dict, manifest: dict, verify: bool) -> dict:
    """The frozen params (frozen_target's structure) in their shardings: stored subtrees from
    workdir/frozen/params, referenced ones from their converted checkpoints (whole subtrees: `target`'s
    shardings and the trainer's dtype, then cut to the frozen part)."""
    from flax import traverse_util

    from flamingo_jax.convert.store import load_converted, read_manifest

    subtrees = manifest["subtrees"]
    stored = sorted(k for k, v in subtrees.items() if v["source"] == "workdir")
    frozen: dict = {}
    if stored:
        root = os.path.join(workdir, "frozen", "params")
        try:
            frozen.update(ocp.StandardCheckpointer().restore(root, {k: frozen_target[k] for k in stored}))
        except Exception as e:  # noqa: BLE001 - any failure to read is a damaged store
            raise CheckpointError(f"{root} cannot be read ({one_line(e)})") from None
    for k, src in subtrees.items():
        if src["source"] == "workdir":
            got = fingerprint(frozen[k]) if verify else src["sha256"]
        else:
            got = read_manifest(src["path"]).get("params_sha256", "")
            dtype = jax.tree.leaves(frozen_target[k])[0].dtype
            whole, _ = load_converted(src["path"], shardings=jax.tree.map(lambda x: x.sharding, target[k]), dtype=dtype)
            keep = set(traverse_util.flatten_dict(frozen_target[k]))  # e.g. the LM but its trainable rows
            frozen[k] = traverse_util.unflatten_dict(
                {p: v
                 for p, v in traverse_util.flatten_dict(whole).items() if p in keep})
        if got != src["sha256"]:
            raise CheckpointError(f"frozen hash mismatch for {k!r}: found {got[:12]}..., {workdir}/frozen records "
                                  f"{src['sha256'][:12]}...")
    return frozen


# ----------------------------------------------------------------------------------------------------------
# Preemption.


class Preemption:
    """SIGTERM / SIGINT ask the loop to finish its step, save and stop.

    One process: Python handlers set a flag (a second SIGINT interrupts at once). Several processes: JAX's
    preemption service (started by jax.distributed) owns SIGTERM and agrees on a step every process reaches
    (multihost_utils.reached_preemption_sync_point), so all save the same step; SIGINT is turned into a
    SIGTERM to join that protocol."""

    def __init__(self):
        self.flag = False
        self.signal_name = ""
        self.multi = jax.process_count() > 1
        self._old = {}
        signals = (signal.SIGINT, ) if self.multi else (signal.SIGTERM, signal.SIGINT)
        for sig in signals:
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: no handlers, no preemption checkpoints
                pass

    def _handle(self, signum, frame) -> None:
        if self.multi:
            os.kill(os.getpid(), signal.SIGTERM)
            return
        if self.flag and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.flag, self.signal_name = True, signal.Signals(signum).name
        pylogging.getLogger("flamingo_jax").warning("%s received: finishing the step, then saving", self.signal_name)

    def reached(self, step: int) -> bool:
        """Whether to save and stop after `step` updates (called after every step, on every process)."""
        if not self.multi:
            return self.flag
        from jax.experimental import multihost_utils
        try:
            hit = multihost_utils.reached_preemption_sync_point(step)
        except RuntimeError:  # preemption service disabled
            return False
        if hit:
            self.flag, self.signal_name = True, self.signal_name or "SIGTERM"
        return hit

    def restore_handlers(self) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old = {}


# ----------------------------------------------------------------------------------------------------------
# Sizes.


def checkpoint_bytes(config: ml_collections.ConfigDict) -> dict:
    """Bytes of one step checkpoint (trainable + optimizer state + counters) versus the full tree (the same
    plus every frozen param), from shapes only."""
    from flamingo_jax import models, optim
    from flamingo_jax.train import dummy_inputs
    from flamingo_jax.train_step import init_state

    model = models.build(config.model)
    rng = jax.random.key(0)
    inputs = dummy_inputs(config.model)
    import flax.linen as nn
    params = nn.meta.unbox(jax.eval_shape(lambda r: model.init(r, *inputs), rng)["params"])
    trainable, frozen = optim.partition(params, config.trainable)
    tx, _ = optim.make_optimizer(config.optimizer, trainable, config.total_steps)
    state = jax.eval_shape(lambda t, r: _storable(init_state(t, tx, r)), trainable, rng)
    size = lambda tree: sum(
        int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize  # noqa: E731
        for x in jax.tree.leaves(tree))
    return {
        "step_checkpoint": size(state), "trainable_params": size(trainable),
        "optimizer_state": size(state["opt_state"]), "frozen_params": size(frozen),
        "full_tree": size(state) + size(frozen)
    }
