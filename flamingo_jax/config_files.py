"""Experiment config files: where one is, how it is loaded, and how a command line reads it.

The configs live in the checkout's experiments/ folder, which is installed as `flamingo_jax.experiments`
(setup.py). A config is named by a spec, `FILE[:arg]`: `get_config(arg)` builds it (no arg: `get_config()`).

    find_config("experiments/tiny.py:vocab_size=64")   # the same spec, the installed copy outside a checkout
    load_config("experiments/world.py:steps=300")       # the locked ConfigDict (by path)
    load_config("world:steps=300")                      # the same file by name
    parse_flags(prog, doc, argv, define)                # a CLI's absl flags, `--config SPEC --config.a.b=v` included

There is ONE loader: `load_config` is ml_collections' ConfigFileFlagParser, the parser behind
`config_flags.DEFINE_config_file`, so a config loaded by a function (experiments/world.py loading tiny.py,
experiments/ablations.py its base, the data preview) is the one `--config SPEC` gives every CLI. What it adds
is only where the file is (a name, the installed copy) and one error naming the fix when there is none.

This module imports nothing heavy (absl flags and ml_collections): the CLIs call it before their flags are parsed.
"""

from __future__ import annotations

import importlib.util
import os
import re
import sys
from typing import Callable, Sequence

import ml_collections
from absl import flags
from ml_collections import config_flags
from ml_collections.config_flags import config_flags as config_flags_lib

PACKAGE = "flamingo_jax.experiments"
# 'NAME' or 'NAME:arg': a config named without a folder or '.py' (experiments/NAME.py)
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def installed_dir() -> str | None:
    """The folder of the installed experiment configs, or None when flamingo_jax.experiments is not installed."""
    try:
        spec = importlib.util.find_spec(PACKAGE)
    except ImportError:
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return list(spec.submodule_search_locations)[0]


def find_config(spec: str, folder: str | None = None) -> str:
    """'experiments/NAME.py[:arg]' or 'NAME[:arg]' -> the spec of the file that exists, arg kept.

    A bare NAME is `folder`/NAME.py when a folder is given (a config loading its sibling), else
    experiments/NAME.py. Then 'experiments/NAME.py' that does not exist here is the installed package's copy
    when it has a file of that name. Any other spec is returned as given (so a missing file is reported under
    the name the user typed)."""
    path, sep, arg = spec.partition(":")
    if _NAME.match(path):
        if folder:
            return os.path.join(folder, f"{path}.py") + sep + arg
        path = os.path.join("experiments", f"{path}.py")
    if os.path.exists(path) or os.path.dirname(os.path.normpath(path)) not in ("experiments", ""):
        return path + sep + arg
    installed = installed_dir()
    candidate = os.path.join(installed, os.path.basename(path)) if installed else None
    if candidate and os.path.isfile(candidate):
        return candidate + sep + arg
    return path + sep + arg


def load_config(spec: str, *, folder: str | None = None) -> ml_collections.ConfigDict:
    """The locked config of `spec` ('experiments/NAME.py[:arg]', any 'path.py[:arg]', or 'NAME[:arg]'; see
    find_config), loaded as `--config SPEC` loads it. A missing file raises FileNotFoundError naming it."""
    found = find_config(spec, folder)
    path = found.partition(":")[0]
    if not os.path.isfile(path):
        where = [d for d in (folder, "experiments", installed_dir()) if d]
        raise FileNotFoundError(f"config {spec!r}: no file {path}; give a config file's path or the name of one "
                                f"of {', '.join(where)}/*.py")
    # The module name is the file's: a config that loads another (world.py loads tiny.py) must not execute
    # into the module object of the file being loaded (the loader reuses sys.modules[name]).
    name = "flamingo_jax_experiment_" + re.sub(r"\W", "_", os.path.splitext(os.path.basename(path))[0])
    return config_flags_lib.ConfigFileFlagParser(name).parse(found)


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


def config_spec(flag_values: flags.FlagValues, name: str = "config") -> str:
    """The config a command line ran with, as one string: the file spec, then its `--config.x=v` overrides."""
    holder = flag_values[name]
    overrides = config_flags.get_override_values(holder)
    return " ".join([config_flags.get_config_filename(holder)] + [f"--{name}.{k}={v}" for k, v in overrides.items()])


def parse_flags(prog: str, doc: str, argv: Sequence[str] | None,
                define: Callable[[flags.FlagValues, list[str]], None]) -> tuple[flags.FlagValues, list[str]]:
    """A CLI's flags, parsed from argv (sys.argv[1:] when None, the program name not included).

    define(flag_values, argv) defines them, `--config` with config_flags.DEFINE_config_file(flag_values=...,
    sys_argv=argv) so that `--config.a.b=v` overrides apply. Each call builds its own absl FlagValues, so a
    CLI's main(argv) can run several times in one process (tests) beside the global flags of train/evaluate.
    `--help` prints the flags and exits 0; a bad flag or an override of a field the config lacks prints the
    error and exits 2 (argparse's convention, which these CLIs had). Returns the parsed flags and the positional arguments."""
    argv = resolve_argv([prog] + list(sys.argv[1:] if argv is None else argv))
    flag_values = flags.FlagValues()
    if any(a in ("--help", "-h", "--helpfull") for a in argv[1:]):
        define(flag_values, argv[:1])  # no file is read for the help
        print(f"{doc.strip()}\n\nflags:\n{flag_values.get_help()}")
        raise SystemExit(0)
    define(flag_values, argv)
    try:
        positional = flag_values(argv)
    except flags.Error as e:
        print(f"{prog}: error: {e}\nTry --help.", file=sys.stderr)
        raise SystemExit(2) from None
    except (AttributeError, KeyError) as e:  # config_flags: an override of a field the config does not have
        print(f"{prog}: error: a --config.FIELD override names no field of the config: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    return flag_values, positional[1:]
