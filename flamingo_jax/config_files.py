"""Where an experiment config file is: the path given, or the copy installed with the package.

The configs live in the checkout's experiments/ folder, which is installed as `flamingo_jax.experiments`
(setup.py). Every CLI takes `--config experiments/tiny.py[:arg]`; from a checkout that path exists, and
outside one (a `pip install .` or a wheel) the same spelling finds the installed copy:

    find_config("experiments/tiny.py:vocab_size=64")  # -> ".../site-packages/flamingo_jax/experiments/tiny.py:vocab_size=64"

This module imports nothing heavy: the CLIs call it before their flags are parsed.
"""

from __future__ import annotations

import importlib.util
import os
from typing import Sequence

PACKAGE = "flamingo_jax.experiments"


def installed_dir() -> str | None:
    """The folder of the installed experiment configs, or None when flamingo_jax.experiments is not installed."""
    try:
        spec = importlib.util.find_spec(PACKAGE)
    except ImportError:
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return list(spec.submodule_search_locations)[0]


def find_config(spec: str) -> str:
    """'experiments/NAME.py[:arg]' -> the same spec, its path replaced by the installed copy's when the path
    does not exist here and the installed package holds a file of that name. Any other spec is returned
    as given (so a missing file is reported by the CLI, under the name the user typed)."""
    path, sep, arg = spec.partition(":")
    if os.path.exists(path) or os.path.dirname(os.path.normpath(path)) not in ("experiments", ""):
        return spec
    folder = installed_dir()
    candidate = os.path.join(folder, os.path.basename(path)) if folder else None
    if candidate and os.path.isfile(candidate):
        return candidate + sep + arg
    return spec


def resolve_argv(argv: Sequence[str]) -> list[str]:
    """The command line with its `--config X` / `--config=X` value passed through find_config (absl's
    config_flags read the file while parsing, so this runs before)."""
    out = list(argv)
    for i, a in enumerate(out):
        if a == "--config" and i + 1 < len(out):
            out[i + 1] = find_config(out[i + 1])
        elif a.startswith("--config="):
            out[i] = "--config=" + find_config(a[len("--config="):])
    return out
