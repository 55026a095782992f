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

from flamingo_jax.checkpoint.checksums import CHECKSUM_ALGORITHM, ChecksumMismatch, checksums, verify_checksums
from flamingo_jax.checkpoint.common import DATA, FROZEN_FORMAT, META, STATE, CheckpointError, one_line
from flamingo_jax.checkpoint.frozen import (check_frozen_fingerprint, fingerprint, frozen_fingerprint, frozen_sources,
                                            prepare_frozen)
from flamingo_jax.checkpoint.orbax_logs import quiet_orbax_info, read_only_manager
from flamingo_jax.checkpoint.restore import read_workdir, restore_params
from flamingo_jax.checkpoint.steps import Checkpoints, Restored, storable, versions

__all__ = [
    "CHECKSUM_ALGORITHM", "DATA", "FROZEN_FORMAT", "META", "STATE", "CheckpointError", "ChecksumMismatch",
    "Checkpoints", "Restored", "check_frozen_fingerprint", "checksums", "fingerprint", "frozen_fingerprint",
    "frozen_sources", "one_line", "prepare_frozen", "quiet_orbax_info", "read_only_manager", "read_workdir",
    "restore_params", "storable", "verify_checksums", "versions"
]
