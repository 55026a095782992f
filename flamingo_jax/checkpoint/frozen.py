"""The frozen store: frozen params stored once in the workdir (or referenced to their converted checkpoint) with
a content hash, checked on every resume and restore."""

from __future__ import annotations

import json
import os
from typing import Any, Mapping

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from flamingo_jax.checkpoint.common import FROZEN_FORMAT, CheckpointError, barrier as _barrier, one_line


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


def check_frozen_fingerprint(step: int, meta: Mapping[str, Any], manifest: Mapping[str, Any], workdir: str) -> None:
    """CheckpointError unless step checkpoint `step` (its meta item) was trained with the frozen params that
    workdir/frozen holds (its manifest): the trainer's resume and the evaluation's restore check the same."""
    if meta.get("frozen_fingerprint") != manifest["fingerprint"]:
        raise CheckpointError(f"frozen hash mismatch: checkpoint {step} was trained with frozen params "
                              f"{str(meta.get('frozen_fingerprint'))[:12]}..., {workdir}/frozen holds "
                              f"{manifest['fingerprint'][:12]}...; use the workdir the checkpoint came from")


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
        check_subtree_hash(k, got, src["sha256"], workdir)
    return frozen


def check_subtree_hash(name: str, got: str, recorded: str, workdir: str) -> None:
    """CheckpointError unless frozen subtree `name` read back with sha256 `got` has the hash workdir/frozen records."""
    if got != recorded:
        raise CheckpointError(f"frozen hash mismatch for {name!r}: found {got[:12]}..., {workdir}/frozen records "
                              f"{recorded[:12]}...")
