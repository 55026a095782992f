"""Step checkpoints: Orbax saves of the train state, the data iterator's state and a meta item (the package
docstring has the layout), restored into the current trainer's shardings."""

from __future__ import annotations

import dataclasses
import datetime
import json
import errno
import os
import shutil
import time
from typing import Any, Mapping

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from orbax.checkpoint import checkpoint_managers as policies

from flamingo_jax.checkpoint.checksums import CHECKSUM_ALGORITHM, checksums, verify_checksums
from flamingo_jax.checkpoint.common import DATA, META, STATE, CheckpointError, barrier as _barrier, one_line
from flamingo_jax.checkpoint.data_state import DataStateHandler, DataStateRestore, DataStateSave
from flamingo_jax.checkpoint.frozen import check_frozen_fingerprint
from flamingo_jax.checkpoint.orbax_logs import _OrbaxFailures, quiet_orbax_info


def storable(state: dict) -> dict:
    """The train state with the typed PRNG key as raw key data (what Orbax can write)."""
    return {**state, "rng": jax.random.key_data(state["rng"])}


def _abstract(tree: Any) -> Any:
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)


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
        arrays = storable(state)
        self._check_space(step, arrays)
        meta = {**self.metadata(step), "guard": guard or {}}
        if self.verify:
            meta["checksums"] = {"algorithm": CHECKSUM_ALGORITHM, "arrays": checksums(arrays)}
        args = ocp.args.Composite(
            **{STATE: ocp.args.StandardSave(arrays), DATA: DataStateSave(data_state), META: ocp.args.JsonSave(meta)})
        self.pending_step = step
        try:
            self.manager.save(step, args=args, force=True)
        except Exception as e:  # noqa: BLE001 - a synchronous failure (e.g. creating the directory)
            raise CheckpointError(self._failure(step, e)) from None
        self.last_save_time = time.monotonic()
        return True

    def _check_space(self, step: int, arrays: dict) -> None:
        """CheckpointError when the filesystem says it has less free space than the checkpoint needs; a
        warning when it has less than three times that (the next saves will not fit for long)."""
        need = sum(int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(arrays))
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
        target = _abstract(storable(target_state))
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
