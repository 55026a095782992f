"""Prepares the TFDS datasets of an experiment config once, ahead of training, and reports what it skipped.

    python -m flamingo_jax.data.prepare --config experiments/tiny.py --datasets m3w,align [--parallel 2] \
        [--config.data.manual_dir=DIR --config.data.datasets.m3w.builder=mmc4 ...]

Each named entry of config.data.datasets (or config.data.eval_sets, with --eval_sets) is built from its
manual directory into array_record under config.data.data_dir, as training would on first use, but:
  - in parallel, one process per dataset (--parallel; a corpus too big for one machine is a job for the
    builders' distributed path, see the README);
  - resumable: a rerun skips every dataset already prepared. A dataset interrupted while it was being built
    starts again (TFDS writes a build to a temporary folder and moves it into place when it is complete);
  - with progress: a line every 10 s per dataset (records written and skipped, records/s, shard k/n, ETA);
  - ending with a report per dataset: records written per split, records skipped per reason, repairs, bytes
    on disk (also in <prepared dir>/prepare_report.json). Bad records never stop it and never pass silently
    (flamingo_jax_datasets.common.FileBuilder).
A multi-process training run prepares on process 0 only (others wait at a barrier), but preparing here first
keeps the accelerators from idling while one host decodes a corpus.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
import time
from typing import Any

from absl import app, flags
from ml_collections import config_flags

from flamingo_jax import files
from flamingo_jax.data import builders, mixture


def dataset_target(data_config, name: str, eval_set: bool = False) -> dict[str, Any]:
    """(builder, config, data_dir, manual_dir) of a config.data.datasets / eval_sets entry, as training opens it."""
    table = data_config.eval_sets if eval_set else data_config.datasets
    if name not in table:
        raise ValueError(f'{name!r} is not in config.data.{"eval_sets" if eval_set else "datasets"} ({sorted(table)})')
    entry = table[name]
    data_dir = mixture.data_dir(data_config)
    if entry.builder == "flamingo_world":
        from flamingo_jax.data import config as config_lib

        module = builders.builder_module("flamingo_world")
        cfg = module.make_config(entry.builder_config, config_lib.world_config(data_config))
        return dict(name=name, builder="flamingo_world", config=cfg, data_dir=data_dir, manual_dir=None)
    return dict(name=name, builder=entry.builder, config=entry.builder_config or None, data_dir=data_dir,
                manual_dir=mixture.manual_dir(data_config, entry))


def folder_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


def prepare_one(target: dict[str, Any]) -> dict[str, Any]:
    """Prepares one dataset (in a worker process) and returns its report."""
    t0 = time.perf_counter()
    builder = builders.get_builder(target["builder"], target["config"], target["data_dir"])
    already = builders.is_prepared(builder)
    builder = builders.prepare(target["builder"], target["config"], target["data_dir"], target["manual_dir"])
    report = builders.read_report(builder)
    splits = report.get("splits") or {s: {"written": int(info.num_examples)} for s, info in builder.info.splits.items()}
    return {
        "dataset": target["name"], "builder": target["builder"],
        "config": builder.builder_config.name if builder.builder_config else "",
        "status": "already prepared" if already else "prepared", "seconds": round(time.perf_counter() - t0, 1),
        "bytes": folder_bytes(builder.data_dir), "path": builder.data_dir, "splits": splits
    }


def summary_lines(report: dict[str, Any]) -> list[str]:
    lines = [
        f'{report["dataset"]} ({report["builder"]}/{report["config"]}): {report["status"]} in '
        f'{report["seconds"]} s, {report["bytes"] / 1e6:.1f} MB at {report["path"]}'
    ]
    for split, t in report["splits"].items():
        skipped = {k.split("/", 1)[1]: v for k, v in t.items() if k.startswith("skipped/")}
        repaired = {k: v for k, v in t.items() if "/" in k and not k.startswith("skipped/")}
        lines.append(f'  {split}: {t.get("written", 0)} written, {sum(skipped.values())} skipped {skipped or ""}' +
                     (f", repairs {repaired}" if repaired else ""))
    return lines


def prepare_all(data_config, names: list[str], eval_sets: list[str] = (), parallel: int = 0) -> list[dict]:
    """Prepares the named datasets (parallel > 1: that many worker processes) and returns their reports."""
    targets = [dataset_target(data_config, n)
               for n in names] + [dataset_target(data_config, n, True) for n in eval_sets]
    parallel = parallel or min(len(targets), os.cpu_count() or 1)
    if parallel <= 1 or len(targets) <= 1:
        return [prepare_one(t) for t in targets]
    # spawn: TensorFlow in a forked child of a process that imported it can hang
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(parallel, mp_context=ctx) as pool:
        return list(pool.map(prepare_one, targets))


def main(argv, config_flag, datasets_flag, eval_flag, parallel_flag, json_flag) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}")
    if config_flag.value is None:
        raise SystemExit("error: --config is required (e.g. --config experiments/tiny.py)")
    data_config = config_flag.value.data if "data" in config_flag.value else config_flag.value
    names = [n for n in datasets_flag.value.split(",") if n] if datasets_flag.value else list(data_config.mixture)
    evals = [n for n in eval_flag.value.split(",") if n]
    try:
        reports = prepare_all(data_config, names, evals, parallel_flag.value)
    except (ValueError, FileNotFoundError, AssertionError) as e:
        raise SystemExit(f'error: {" ".join(str(e).split())}') from None
    for r in reports:
        print("\n".join(summary_lines(r)), flush=True)
    if json_flag.value:
        files.write_json(json_flag.value, reports, indent=1)


def run() -> None:
    config_flag = config_flags.DEFINE_config_file("config", None, "experiment config file[:arg]", lock_config=True)
    datasets_flag = flags.DEFINE_string(
        "datasets", "", "comma-separated names in config.data.datasets "
        "(default: config.data.mixture)")
    eval_flag = flags.DEFINE_string("eval_sets", "", "comma-separated names in config.data.eval_sets")
    parallel_flag = flags.DEFINE_integer("parallel", 0, "datasets prepared at once (0: one per CPU, at most)")
    json_flag = flags.DEFINE_string("report", "", "also write the reports to this JSON file")
    from flamingo_jax.config_files import resolve_argv

    app.run(lambda argv: main(argv, config_flag, datasets_flag, eval_flag, parallel_flag, json_flag),
            flags_parser=lambda argv: flags.FLAGS(resolve_argv(argv)))


if __name__ == "__main__":
    run()
