"""How an ablation row edits a config: `apply_row(base, row)`, strictly (an unknown path is an error).

The ablations live in three modules, one job each:
    experiments/ablations.py       the rows of the paper's Tables 3 and 10: named overrides of one baseline config
    flamingo_jax/ablation_rows.py  applying a row to the baseline, and what kind of baseline it is (this module)
    flamingo_jax/ablate.py         the program: trains and evaluates every (row, seed), then writes the tables
    flamingo_jax/ablations_table.py  per-seed results -> statistics and the .md / .csv / .tex / .png / .json files

This module imports nothing heavy: experiments/ablations.py imports it while a CLI parses its flags.
"""

from __future__ import annotations

import copy
from typing import Any, Mapping, Sequence

import ml_collections


class AblationError(ValueError):
    """A row that does not apply to the base config (unknown path, bad list edit, wrong type)."""


def is_world_data(config: ml_collections.ConfigDict) -> bool:
    """True when the training data come from the generated world (the default data config)."""
    ds = config.data.datasets
    return all(ds[n].builder == "flamingo_world" for n in ("m3w", "align", "ltip", "vtp") if n in ds)


def is_world_scale(config: ml_collections.ConfigDict) -> bool:
    """True for CPU-sized models (a 'tiny' vision tower): rows then use the world stand-ins of paper towers."""
    return config.model.vision.get("size") == "tiny"


def _walk(config: ml_collections.ConfigDict, path: str) -> tuple[ml_collections.ConfigDict, str]:
    keys = path.split(".")
    node = config
    for i, k in enumerate(keys[:-1]):
        if not isinstance(node, ml_collections.ConfigDict) or k not in node:
            raise AblationError(f"unknown config path {path!r}: {'.'.join(keys[:i + 1])!r} does not exist")
        node = node[k]
    if not isinstance(node, ml_collections.ConfigDict) or keys[-1] not in node:
        raise AblationError(f"unknown config path {path!r}")
    return node, keys[-1]


def _overrides(row: Any) -> list[tuple[str, Any]]:
    items = row.overrides if hasattr(row, "overrides") else (row.get("overrides",
                                                                     ()) if isinstance(row, Mapping) else row)
    out = []
    for item in items:
        if len(item) != 2 or not isinstance(item[0], str):
            raise AblationError(f"row override {item!r} is not (dotted path, value)")
        out.append((item[0], item[1]))
    return out


def apply_row(base: ml_collections.ConfigDict, row: Any) -> ml_collections.ConfigDict:
    """A copy of `base` with the row's overrides applied; `base` is not modified.

    row: a row of experiments/ablations.py (with .overrides) or a list of (dotted path, value). A path ending in
    '+' appends the listed items to a list field (items already there are kept once), '-' removes them (each
    must be present); otherwise the field is replaced (a ConfigDict/dict value replaces a whole sub-config, e.g.
    model.vision). Every path must exist in `base` and values keep the field's type: anything else raises
    AblationError, never a silent no-op. The result is locked like the experiment configs."""
    config = copy.deepcopy(base)
    with config.unlocked():
        for path, value in _overrides(row):
            op = path[-1] if path[-1] in "+-" else "="
            clean = path[:-1] if op != "=" else path
            node, key = _walk(config, clean)
            current = node[key]
            if op != "=":
                if not isinstance(current, (list, tuple)):
                    raise AblationError(
                        f"{clean!r} is not a list: cannot {'append to' if op == '+' else 'remove from'} it")
                items = [value] if isinstance(value, str) else list(value)
                if op == "+":
                    new = list(current) + [x for x in items if x not in current]
                else:
                    missing = [x for x in items if x not in current]
                    if missing:
                        raise AblationError(f"{clean!r} = {list(current)} does not contain {missing}")
                    new = [x for x in current if x not in items]
                value = type(current)(new)
            elif isinstance(current, ml_collections.ConfigDict):
                if not isinstance(value, (Mapping, ml_collections.ConfigDict)):
                    raise AblationError(f"{clean!r} is a sub-config: replace it with a dict, not {value!r}")
                value = ml_collections.ConfigDict(value.to_dict() if hasattr(value, "to_dict") else dict(value))
            elif isinstance(current, (list, tuple)) and isinstance(value, (list, tuple)):
                value = type(current)(value)
            try:
                node[key] = value
            except TypeError as e:
                raise AblationError(f"{clean!r}: {e}") from None
        if "data" in config and not list(config.data.mixture):
            raise AblationError("the row leaves config.data.mixture empty")
    config.lock()
    return config


def runnable_rows(config: ml_collections.ConfigDict, names: Sequence[str] | None = None) -> list[str]:
    """Selected row names (all of the table by default), validated against config.rows."""
    order = list(config.get("row_order") or config.rows)
    if not names:
        return order
    unknown = [n for n in names if n not in config.rows]
    if unknown:
        raise ValueError(f"unknown rows {unknown}; this table has {list(config.rows)}")
    return list(names)
