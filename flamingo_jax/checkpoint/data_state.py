"""The data iterator's state in a step checkpoint: one JSON file per process (each reads its own shard)."""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Mapping

import jax
import numpy as np
import orbax.checkpoint as ocp

from flamingo_jax.checkpoint.common import CheckpointError

_BYTES = "__bytes_base64__"
_TEST_SLOW_SAVE_S = float(os.environ.get("FLAMINGO_JAX_TEST_SLOW_SAVE_S", "0") or 0)


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


@ocp.args.register_with_handler(DataStateHandler, for_save=True)
@dataclasses.dataclass
class DataStateSave(ocp.args.CheckpointArgs):
    item: Mapping[str, Any]


@ocp.args.register_with_handler(DataStateHandler, for_restore=True)
@dataclasses.dataclass
class DataStateRestore(ocp.args.CheckpointArgs):
    item: Any = None
