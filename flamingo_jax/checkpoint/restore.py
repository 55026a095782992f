"""Reading a training workdir's params for evaluation, inference and export: into shardings (restore_params)
or whole on the host (read_workdir), from the newest intact step checkpoint and the frozen store."""

from __future__ import annotations

import json
import os
import re
from typing import Any, Callable

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from flamingo_jax import optim
from flamingo_jax.checkpoint.checksums import verify_checksums
from flamingo_jax.checkpoint.common import META, STATE, CheckpointError, one_line
from flamingo_jax.checkpoint.frozen import _restore_frozen, check_frozen_fingerprint, check_subtree_hash
from flamingo_jax.checkpoint.orbax_logs import read_only_manager


def restore_params(workdir: str, config: ml_collections.ConfigDict, target: Any, step: int | None = None, *,
                   verify: bool = True) -> tuple[dict, int]:
    """(params, step): a training workdir's newest intact step checkpoint (or `step`) restored straight into
    the shardings of `target`, the whole param tree as jax.ShapeDtypeStructs with shardings
    (flamingo_jax.train_state.param_targets). Orbax reads, on every process, only the array slices that its devices
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
    workdir = os.path.abspath(workdir)
    manifest = _read_manifest(workdir)
    trainable_target, frozen_target = optim.partition(target, config.trainable)
    if sorted(frozen_target) != sorted(manifest["subtrees"]):
        raise CheckpointError(f"frozen subtrees differ: {workdir} holds {sorted(manifest['subtrees'])}, the config "
                              f"freezes {sorted(frozen_target)}; evaluate with the config that trained it")
    trainable, step = _restore_trainable(workdir, {"trainable": trainable_target}, manifest, step, verify)
    return optim.merge(trainable, _restore_frozen(workdir, target, frozen_target, manifest, verify)), step


def _newest_intact(workdir: str, manager: ocp.CheckpointManager, args_for: Callable[[int], Any], manifest: dict,
                   step: int | None, verify: bool) -> tuple[dict, int]:
    """(the restored items {STATE, META}, step) of the newest step checkpoint that reads and was trained with the
    frozen params that workdir/frozen holds (or of `step`, which must). A step that cannot be read is skipped
    for an older one with a warning; nothing is moved (readers never change a training workdir). With `verify`,
    the trainable arrays' checksums recorded at save are checked. CheckpointError when no step is intact."""
    steps = sorted(manager.all_steps())
    if not steps:
        raise CheckpointError(f"{workdir} holds no step checkpoint (expected {workdir}/checkpoints/<step>)")
    if step is not None and step not in steps:
        raise CheckpointError(f"{workdir} has no checkpoint of step {step}; it has {steps}")
    for s in ([step] if step is not None else reversed(steps)):
        try:
            out = manager.restore(s, args=args_for(s))
        except Exception as e:  # noqa: BLE001 - unreadable: an older step may be intact
            if step is not None:
                raise CheckpointError(f"checkpoint {s} of {workdir} cannot be read ({one_line(e)})") from None
            logging.warning("checkpoint %d of %s cannot be read (%s); trying an older one", s, workdir, one_line(e))
            continue
        check_frozen_fingerprint(s, out[META], manifest, workdir)
        if verify:
            verify_checksums(out[STATE], (out[META].get("checksums") or {}).get("arrays"), partial=True)
        return out, s
    raise CheckpointError(f"no intact checkpoint in {workdir}/checkpoints (steps {steps}; see the warnings)")


def _read_manifest(workdir: str) -> dict:
    path = os.path.join(workdir, "frozen", "manifest.json")
    if not os.path.exists(path):
        raise CheckpointError(f"{workdir} holds no training checkpoint (no frozen/manifest.json): pass the "
                              f"--workdir of a flamingo_jax.train run")
    with open(path) as f:
        return json.load(f)


def _restore_trainable(workdir: str, target: dict, manifest: dict, step: int | None, verify: bool) -> tuple[dict, int]:
    """target {'trainable': abstract tree} -> (trainable params in their shardings, step); the optimizer state is
    never read (partial restore)."""
    manager = read_only_manager(os.path.join(workdir, "checkpoints"),
                                {STATE: ocp.PyTreeCheckpointHandler(), META: ocp.JsonCheckpointHandler()})
    restore_args = ocp.checkpoint_utils.construct_restore_args(target)
    args = ocp.args.Composite(
        **{
            STATE: ocp.args.PyTreeRestore(item=target, restore_args=restore_args, partial_restore=True),
            META: ocp.args.JsonRestore()
        })
    try:
        out, s = _newest_intact(workdir, manager, lambda _: args, manifest, step, verify)
    finally:
        manager.close()
    return out[STATE]["trainable"], s


def host_targets(meta_tree: Any) -> Any:
    """Host (numpy) restore targets from Orbax array metadata (no sharding: restored as np.ndarray)."""
    return jax.tree.map(lambda m: jax.ShapeDtypeStruct(tuple(m.shape), m.dtype), meta_tree)


def read_workdir(workdir: str, step: int | None = None) -> tuple[dict, ml_collections.ConfigDict, int, dict]:
    """(params as host numpy, the run's config, step, frozen manifest) of a training workdir's newest intact step
    checkpoint (or `step`), read without building the model: for export, tools and small models. Evaluation
    restores into shardings instead (restore_params), so that no host holds the whole tree. Checked: the frozen
    fingerprint and every frozen subtree's sha256 (the trainable arrays' checksums are computed on device at save
    and checked by restore_params, not here)."""
    from flamingo_jax.convert.store import load_converted, params_fingerprint, read_manifest

    workdir = os.path.abspath(workdir)
    manifest = _read_manifest(workdir)
    manager = read_only_manager(os.path.join(workdir, "checkpoints"),
                                {STATE: ocp.StandardCheckpointHandler(), META: ocp.JsonCheckpointHandler()})

    def args_for(s: int) -> Any:
        tree = manager.item_metadata(s)[STATE]
        tree = getattr(tree, "tree", tree)
        return ocp.args.Composite(**{STATE: ocp.args.StandardRestore(host_targets(tree)), META: ocp.args.JsonRestore()})

    try:
        out, step = _newest_intact(workdir, manager, args_for, manifest, step, verify=False)
    finally:
        manager.close()
    trainable, meta = out[STATE]["trainable"], out[META]
    frozen = {}
    stored = [k for k, v in manifest["subtrees"].items() if v["source"] == "workdir"]
    if stored:
        params_dir = os.path.join(workdir, "frozen", "params")
        ckptr = ocp.StandardCheckpointer()
        tree = ckptr.metadata(params_dir).item_metadata.tree
        frozen.update(ckptr.restore(params_dir, host_targets(tree)))
    for k, src in manifest["subtrees"].items():
        if src["source"] == "workdir":
            got = params_fingerprint(frozen[k])
        else:
            got = read_manifest(src["path"]).get("params_sha256", "")
            frozen[k], _ = load_converted(src["path"])
        check_subtree_hash(k, got, src["sha256"], workdir)
    config = ml_collections.ConfigDict(meta["config"])
    frozen = _frozen_part(frozen, config, manifest)
    params = optim.merge(jax.tree.map(np.asarray, trainable), jax.tree.map(np.asarray, frozen))
    return params, config, step, manifest


def _frozen_part(frozen: dict, config: ml_collections.ConfigDict, manifest: dict) -> dict:
    """A referenced converted checkpoint holds whole subtrees: keep only what the config freezes, cast to the
    dtype the trainer used (recorded in the manifest)."""
    for k, src in manifest["subtrees"].items():
        if src["source"] == "pretrained" and src.get("dtype"):
            dt = src["dtype"]
            if dt == "bfloat16":
                import ml_dtypes
                dt = ml_dtypes.bfloat16
            frozen[k] = jax.tree.map(
                lambda x: np.asarray(x).astype(dt)
                if np.issubdtype(np.asarray(x).dtype, np.floating) else np.asarray(x), frozen[k])
    if _any_trainable(frozen, config):
        frozen = optim.partition(frozen, config.trainable)[1]
    return frozen


def _any_trainable(tree: dict, config: ml_collections.ConfigDict) -> bool:

    import flax.traverse_util as tu

    return any(any(re.fullmatch(p, "/".join(k)) for p in config.trainable) for k in tu.flatten_dict(tree))
