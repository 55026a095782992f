"""Files that every program writes or reads the same way.

    write_json(path, obj)        JSON written atomically: a reader sees the old file or the new one, never half
    read_metrics(path)           a run's metrics.jsonl: one record per logged step, a resumed run's later lines win

One place for both: the trainer, the evaluation, reproduce, ablate, export and pretraining write JSON that other
processes read while they run, and four readers of metrics.jsonl had drifted apart (which line wins on resume).
"""

from __future__ import annotations

import json
import os
from typing import Any


def write_json(path: str, obj: Any, *, indent: int | None = 2, sort_keys: bool = False) -> None:
    """Writes obj as JSON to path through a temporary file in the same folder and os.replace (atomic on POSIX;
    the temporary name carries the process id, so processes writing the same path never share one)."""
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=indent, sort_keys=sort_keys)
    os.replace(tmp, path)


def read_metrics(path: str) -> list[dict]:
    """metrics.jsonl's records in step order, one per step (a resumed run rewrites steps: its later lines win);
    [] when the file does not exist. A run dir may be passed for its metrics.jsonl."""
    if os.path.isdir(path):
        path = os.path.join(path, "metrics.jsonl")
    by_step: dict[int, dict] = {}
    if os.path.isfile(path):
        with open(path) as f:
            for line in f:
                if line.strip():
                    rec = json.loads(line)
                    by_step[int(rec["step"])] = rec
    return [by_step[s] for s in sorted(by_step)]
