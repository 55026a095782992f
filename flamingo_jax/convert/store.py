"""Converted weights on disk: an Orbax checkpoint of the params plus a JSON config snippet.

Layout of an output directory:
  params/         Orbax (StandardCheckpointer) checkpoint of the param tree (plain arrays, no boxing)
  config.json     {"format", "kind": "lm" | "vision" | "flamingo", "subtree": "lm" | "vision" | null,
                   "config": the lm_config / vision_config / config.model as a dict, "param_dtype",
                   "params_sha256" (params_fingerprint of the stored tree), "source",
                   "ignored": {name: reason} (checkpoint tensors deliberately left out), "notes": [...]}

`load_converted(path)` returns (params, config): for kind lm/vision the params are the `lm` / `vision`
subtree of config.model and the config is `config.model.lm` / `config.model.vision`; for kind flamingo
(OpenFlamingo) the whole param tree and the whole config.model. Pass `shardings` (a pytree of
jax.sharding.Sharding matching the params, or one Sharding for all) to restore sharded onto a mesh.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import jax
import ml_collections
import numpy as np

from flamingo_jax.files import write_json

FORMAT = "flamingo_jax.convert/1"
KINDS = {"lm": "lm", "vision": "vision", "flamingo": None}


@dataclasses.dataclass
class Converted:
    """A conversion's result. params: plain numpy tree; config: the lm/vision config or config.model."""

    kind: str
    params: dict
    config: ml_collections.ConfigDict
    source: dict
    ignored: dict[str, str] = dataclasses.field(default_factory=dict)
    notes: list[str] = dataclasses.field(default_factory=list)

    @property
    def subtree(self) -> str | None:
        return KINDS[self.kind]


def _cast(params: Any, dtype: str | None) -> Any:
    if dtype is None:
        return params
    if dtype == "bfloat16":
        import ml_dtypes
        dt = ml_dtypes.bfloat16
    else:
        dt = np.dtype(dtype)
    import ml_dtypes

    def floating(x) -> bool:
        return np.issubdtype(x.dtype, np.floating) or x.dtype == ml_dtypes.bfloat16

    return jax.tree.map(lambda x: np.asarray(x).astype(dt, copy=False) if floating(np.asarray(x)) else x, params)


def params_fingerprint(params: Any, to_host: Any = np.asarray) -> str:
    """sha256 over every leaf's path, dtype, shape and bytes (a content hash for frozen-weight checks).
    to_host(leaf) -> np.ndarray reads one leaf (flamingo_jax.checkpoint.fingerprint passes an explicit,
    sharding-aware read); leaves are read one at a time."""
    import hashlib
    h = hashlib.sha256()
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    for path, leaf in sorted(leaves, key=lambda kv: jax.tree_util.keystr(kv[0])):
        x = np.ascontiguousarray(to_host(leaf))
        h.update(f"{jax.tree_util.keystr(path)}|{x.dtype}|{x.shape}|".encode())
        h.update(x.tobytes())
    return h.hexdigest()


def save_converted(out: str, result: Converted, *, dtype: str | None = None, force: bool = False) -> str:
    """Writes `result` under `out` (see the module docstring); returns the absolute path."""
    import orbax.checkpoint as ocp

    out = os.path.abspath(out)
    manifest_path = os.path.join(out, "config.json")
    if os.path.exists(manifest_path) and not force:
        raise FileExistsError(f"{out} already holds a converted checkpoint: choose another --out or pass --force")
    os.makedirs(out, exist_ok=True)
    # float32 unless asked: a bfloat16 source is read as bfloat16 (flamingo_jax.convert.weights) and widened
    # only here, leaf by leaf; --dtype bfloat16 never widens it.
    params = _cast(result.params, dtype or "float32")
    ckptr = ocp.StandardCheckpointer()
    ckptr.save(os.path.join(out, "params"), params, force=True)
    ckptr.wait_until_finished()
    manifest = dict(format=FORMAT, kind=result.kind, subtree=result.subtree, config=result.config.to_dict(),
                    param_dtype=dtype or "float32", params_sha256=params_fingerprint(params), source=result.source,
                    ignored=result.ignored, notes=result.notes)
    # Values JSON lacks (e.g. numpy scalars in a config) are written as their str().
    write_json(manifest_path, json.loads(json.dumps(manifest, default=str)), indent=1)
    return out


def read_record(path: str, fmt: str, what: str, command: str) -> dict:
    """<path>/config.json of a directory of format `fmt` (its "format" field). A missing file raises
    FileNotFoundError saying that path is not `what` and to run `command` first; another format, ValueError."""
    p = os.path.join(path, "config.json")
    if not os.path.isfile(p):
        raise FileNotFoundError(f"{path} is not {what} (no config.json): run `{command}` first")
    with open(p) as f:
        record = json.load(f)
    if record.get("format") != fmt:
        raise ValueError(f"{p}: unknown format {record.get('format')!r} (expected {fmt!r})")
    return record


def read_manifest(path: str) -> dict:
    """The config.json of a converted directory (kind, subtree, config, source, ignored, notes)."""
    return read_record(path, FORMAT, "a converted checkpoint",
                       "python -m flamingo_jax.convert hf|openflamingo ... --out DIR")


def load_converted(path: str, *, shardings: Any = None, dtype: Any = None) -> tuple[dict, ml_collections.ConfigDict]:
    """(params, config) of a converted directory; see the module docstring.

    shardings: None (numpy arrays on host), one jax.sharding.Sharding for every leaf, or a pytree of them
    matching the params. dtype: optional dtype to restore floating leaves as.
    """
    import orbax.checkpoint as ocp

    path = os.path.abspath(path)
    manifest = read_manifest(path)
    ckptr = ocp.StandardCheckpointer()
    params_dir = os.path.join(path, "params")
    if shardings is None and dtype is None:
        params = ckptr.restore(params_dir)
    else:
        meta = ckptr.metadata(params_dir).item_metadata.tree
        if shardings is None:
            shardings = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        if isinstance(shardings, jax.sharding.Sharding):
            shardings = jax.tree.map(lambda _: shardings, meta)

        def target(m, s):
            dt = m.dtype if dtype is None or not np.issubdtype(m.dtype, np.floating) else dtype
            return jax.ShapeDtypeStruct(m.shape, dt, sharding=s)

        params = ckptr.restore(params_dir, jax.tree.map(target, meta, shardings))
    return params, ml_collections.ConfigDict(manifest["config"])
