"""Runs ablation tables: python -m flamingo_jax.ablate --config experiments/ablations.py:table3 --workdir DIR
[--rows a,b] [--seeds N] [--evaluator module:function] [--denominators coco=143.3,...]
[--eval_max_queries N] [--eval_batch_size B] [--seed_batching=true|false] [--list]

For every selected row of the config (experiments/ablations.py) and every seed: the row's overrides are applied
to the baseline (flamingo_jax.ablation_rows.apply_row, strict: an unknown path is an error), missing pretrained towers are pretrained
(flamingo_jax.pretrain, world scale only), the ONE trainer runs (flamingo_jax.train.train), then the few-shot
evaluation (`evaluate_row`: the DEV scores at 4 shots, Table 3's setting). A row's seeds share its architecture and towers: with --seeds > 1 they train
together as ONE batched program (flamingo_jax.seed_batch: the step vmapped over the seeds, each seed's workdir
written as a single run writes it, seed k's weights those of seed k trained alone), then each is evaluated;
--seed_batching=false runs them one by one. Each (row, seed) writes DIR/rows/<row>/seed<k>/result.json; a rerun
skips those that exist, so an interrupted table resumes (an interrupted training run also resumes from its
checkpoints).
Finally DIR/<table>.md, .csv, .tex and .png are written (flamingo_jax.ablations_table).
`--config.x=v` overrides any field of the ablations config, e.g. --config.base.total_steps=50 for every row.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import time
from typing import Any, Callable, Mapping, Sequence

import ml_collections
from absl import flags
from ml_collections import config_flags

from flamingo_jax.ablation_rows import apply_row, runnable_rows
from flamingo_jax.config_files import parse_flags
from flamingo_jax.configs import seeded
from flamingo_jax.evaluation.paper_tables import WORLD_TO_DEV
from flamingo_jax.files import read_metrics, write_json

EVAL_SHOTS = 4  # Table 3: 4 shots

# ---------------------------------------------------------------------------------------------- evaluation


def _find_evaluator(spec: str | None) -> Callable:
    """The evaluator: 'module:function' (function default `evaluate`), else flamingo_jax.evaluate.evaluate."""
    module, _, fn = (spec or "flamingo_jax.evaluate").partition(":")
    return getattr(importlib.import_module(module), fn or "evaluate")


def evaluate_row(config: ml_collections.ConfigDict, workdir: str, *, shots: int = EVAL_SHOTS,
                 evaluator: str | None = None, **eval_kwargs: Any) -> dict[str, float]:
    """{DEV benchmark: score in the tables' units (CIDEr x100, accuracy %)} of the run in `workdir`.

    The evaluator (flamingo_jax.evaluate.evaluate by default) is called as fn(config, workdir, tasks=[eval set
    names], shots=[shots]) and must return {task: fraction} or {task: {shots: fraction}} (CIDEr 0.86, not 86):
    this function turns its fractions into table units. World eval-set names are mapped to the DEV names (captions -> coco, ...). eval_kwargs (e.g.
    max_queries) are passed on to the evaluator."""
    fn = _find_evaluator(evaluator)
    tasks = list(config.data.eval_sets) if "eval_sets" in config.data else list(WORLD_TO_DEV)
    out = fn(config, workdir, tasks=tasks, shots=[shots], **eval_kwargs)
    scores = {}
    for task, value in out.items():
        if isinstance(value, Mapping):
            value = value.get(shots, value.get(str(shots)))
        if value is None:
            continue
        scores[WORLD_TO_DEV.get(task, task)] = 100.0 * float(value)
    return scores


# ---------------------------------------------------------------------------------------------- measures


def step_time(workdir: str, skip_first: bool = True) -> float:
    """Median seconds per update over metrics.jsonl's log intervals (the first, with compilation, skipped)."""
    rates = [float(r["steps_per_sec"]) for r in read_metrics(workdir) if r.get("steps_per_sec")]
    if skip_first and len(rates) > 1:
        rates = rates[1:]
    if not rates:
        return float("nan")
    times = sorted(1.0 / r for r in rates if r > 0)
    n = len(times)
    return times[n // 2] if n % 2 else 0.5 * (times[n // 2 - 1] + times[n // 2])


def final_loss(workdir: str) -> float | None:
    """The loss of the last logged step in metrics.jsonl (None if nothing was logged)."""
    records = read_metrics(workdir)
    return records[-1].get("loss") if records else None


def param_count(model_config: ml_collections.ConfigDict) -> int:
    """Total params of config.model from shapes only."""
    from flamingo_jax.tools.params import count_params

    return count_params(model_config)["total"]


def ensure_pretrained(config: ml_collections.ConfigDict, stage_overrides: Mapping[str, Any] | None = None) -> None:
    """Pretrains (flamingo_jax.pretrain) every configured tower whose directory does not hold one yet.
    stage_overrides: pretrain_config fields (e.g. steps) from the ablation config's `pretrain` section."""
    from flamingo_jax import pretrain

    for kind in ("vision", "lm"):
        path = config.pretrained.get(kind, "")
        if path and not os.path.isfile(os.path.join(path, "config.json")):
            print(f"[ablate] pretraining {kind} -> {path}", flush=True)
            # seed 0: one tower for every seed of every row
            pretrain.pretrain_for(kind, config, path, **{"seed": 0, **dict(stage_overrides or {})})


# ---------------------------------------------------------------------------------------------- runner


def _result(config: ml_collections.ConfigDict, run_dir: str, train_seconds: float, evaluator: str | None,
            eval_kwargs: Mapping[str, Any] | None) -> dict:
    """Evaluates the trained run in run_dir; its result dict (scores, params, step time, seconds, final loss)."""
    t0 = time.perf_counter()
    scores = evaluate_row(config, run_dir, evaluator=evaluator, **dict(eval_kwargs or {}))
    return dict(scores=scores, params=param_count(config.model), step_time=step_time(run_dir),
                train_seconds=train_seconds, eval_seconds=time.perf_counter() - t0, final_loss=final_loss(run_dir))


def run_one(config: ml_collections.ConfigDict, run_dir: str, *, evaluator: str | None = None,
            eval_kwargs: Mapping[str, Any] | None = None, pretrain_overrides: Mapping[str, Any] | None = None) -> dict:
    """Trains and evaluates one (row, seed); returns the result dict (also written to run_dir/result.json)."""
    from flamingo_jax.train import train

    os.makedirs(run_dir, exist_ok=True)
    ensure_pretrained(config, pretrain_overrides)
    t0 = time.perf_counter()
    last = train(config, run_dir)
    if "preempted_at_step" in last:
        raise KeyboardInterrupt(f"training of {run_dir} was interrupted: rerun to resume")
    return _result(config, run_dir, time.perf_counter() - t0, evaluator, eval_kwargs)


def run_seeds(configs: Sequence[ml_collections.ConfigDict], run_dirs: Sequence[str], *, evaluator: str | None = None,
              eval_kwargs: Mapping[str, Any] | None = None,
              pretrain_overrides: Mapping[str, Any] | None = None) -> list[dict]:
    """run_one for several seeds of one row: trained as one batched program (flamingo_jax.seed_batch), then
    each evaluated; returns their result dicts. train_seconds is each seed's share of the batched training
    (batch_train_seconds the whole of it, seeds_batched the number of seeds); step_time is read from each
    seed's metrics.jsonl as for a single run, so it is the batched program's time per update."""
    from flamingo_jax.seed_batch import train_configs

    for d in run_dirs:
        os.makedirs(d, exist_ok=True)
    ensure_pretrained(configs[0], pretrain_overrides)  # towers are pretrained with seed 0: the same for every seed
    t0 = time.perf_counter()
    lasts = train_configs(configs, run_dirs)
    if any("preempted_at_step" in last for last in lasts):
        raise KeyboardInterrupt(f"training of {list(run_dirs)} was interrupted: rerun to resume")
    train_seconds = time.perf_counter() - t0
    return [
        dict(_result(config, run_dir, train_seconds / len(configs), evaluator, eval_kwargs),
             batch_train_seconds=train_seconds, seeds_batched=len(configs))
        for config, run_dir in zip(configs, run_dirs)
    ]


def _batch_blocker(configs: Sequence[ml_collections.ConfigDict]) -> str:
    """Why these seeds cannot train as one program ('' when they can)."""
    from flamingo_jax.seed_batch import SeedBatchError, check_batchable

    try:
        check_batchable(configs)
    except SeedBatchError as e:
        return str(e)
    return ""


def run_table(config: ml_collections.ConfigDict, workdir: str, rows: Sequence[str] | None = None, seeds: int = 2,
              evaluator: str | None = None, denominators: Mapping[str, float] | None = None,
              runner: Callable[[ml_collections.ConfigDict, str], dict] | None = None,
              eval_kwargs: Mapping[str, Any] | None = None, seed_batching: bool = True,
              seeds_runner: Callable[[list, list], list[dict]] | None = None) -> dict[str, list[dict]]:
    """Runs every selected (row, seed) not done yet, then writes the table files; returns {row: [results]}.

    With seed_batching, a row's seeds still to run (two or more) train as one batched program (run_seeds);
    otherwise, or when they cannot (seed_batch.check_batchable), one by one (run_one).
    runner(config, run_dir) -> result dict replaces train+evaluate of one seed, seeds_runner(configs,
    run_dirs) -> [result dicts] that of a row's batched seeds (tests); a runner without a seeds_runner runs
    every seed through the runner."""
    from flamingo_jax import ablations_table

    names = runnable_rows(config, rows)
    results: dict[str, list[dict]] = {}
    start = time.perf_counter()
    for name in names:
        row = config.rows[name]
        results[name] = []
        if not row.runnable:
            print(f"[ablate] {name}: not runnable here: {row.reason}", flush=True)
            continue
        row_config = apply_row(config.base, row)
        stage = config.pretrain.to_dict() if "pretrain" in config else {}
        done: dict[int, dict] = {}
        todo: list[int] = []
        run_dirs = {k: os.path.join(workdir, "rows", name, f"seed{k}") for k in range(seeds)}
        for k in range(seeds):
            result_path = os.path.join(run_dirs[k], "result.json")
            if os.path.isfile(result_path):
                with open(result_path) as f:
                    done[k] = json.load(f)
            else:
                todo.append(k)

        def finish(k: int, result: dict) -> None:
            result.update(row=name, seed=k)
            os.makedirs(run_dirs[k], exist_ok=True)
            write_json(os.path.join(run_dirs[k], "result.json"), result, indent=1)
            done[k] = result

        cfgs = {k: seeded(row_config, k) for k in todo}
        batched = seed_batching and len(todo) > 1 and (runner is None or seeds_runner is not None)
        if batched:
            blocker = _batch_blocker([cfgs[k] for k in todo])
            if blocker:
                print(f"[ablate] {name}: seeds run one by one ({blocker})", flush=True)
                batched = False
        if batched:
            print(f"[ablate] {name} seeds {todo} batched -> {os.path.join(workdir, 'rows', name)}", flush=True)
            run_many = seeds_runner or (lambda cs, ds: run_seeds(cs, ds, evaluator=evaluator, eval_kwargs=eval_kwargs,
                                                                 pretrain_overrides=stage))
            outs = run_many([cfgs[k] for k in todo], [run_dirs[k] for k in todo])
            if len(outs) != len(todo):
                raise RuntimeError(f"{name}: {len(outs)} results for seeds {todo}")
            for k, result in zip(todo, outs):
                finish(k, result)
        else:
            run = runner or (
                lambda c, d: run_one(c, d, evaluator=evaluator, eval_kwargs=eval_kwargs, pretrain_overrides=stage))
            for k in todo:
                print(f"[ablate] {name} seed {k} -> {run_dirs[k]}", flush=True)
                finish(k, run(cfgs[k], run_dirs[k]))
        results[name] = [done[k] for k in sorted(done)]
    meta = [
        dict(name=n, **{k: config.rows[n][k]
                        for k in ("label", "group", "runnable", "reason", "note")},
             paper=config.rows[n].paper.to_dict()) for n in names
    ]
    elapsed = time.perf_counter() - start
    ablations_table.write_tables(
        workdir, config.table, meta, results, denominators=denominators,
        extra={"wall_seconds_this_invocation": round(elapsed, 1), "seeds": seeds, "seed_batching": seed_batching})
    return results


def enable_compilation_cache(path: str) -> None:
    """JAX's persistent compilation cache (unless the environment already sets one): rows that change only the
    data (and every seed of a row) compile the same train and decode steps, so most rows skip XLA compiles."""
    if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        return
    import jax

    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


def parse_denominators(text: str) -> dict[str, float] | None:
    if not text:
        return None
    out = {}
    for item in text.split(","):
        k, _, v = item.partition("=")
        out[k.strip()] = float(v)
    return out


def define_flags(flag_values: flags.FlagValues, argv: list[str]) -> None:
    """The command line of the module docstring; `--config.x=v` overrides any field of the ablations config
    (e.g. --config.base.total_steps=50: every row's training steps)."""
    config_flags.DEFINE_config_file("config", None, "experiments/ablations.py:table3[,knob=value,...]",
                                    flag_values=flag_values, sys_argv=argv)
    flags.mark_flag_as_required("config", flag_values=flag_values)
    define = dict(flag_values=flag_values)
    flags.DEFINE_string("workdir", None, "the table's folder (rows, tables, compilation cache)", required=True,
                        **define)
    flags.DEFINE_list("rows", [], "comma-separated row names (default: every row of the table)", **define)
    flags.DEFINE_integer("seeds", 2, "seeds per row", **define)
    flags.DEFINE_string("evaluator", "", "module:function (default: flamingo_jax.evaluate.evaluate)", **define)
    flags.DEFINE_string("denominators", "", "overall-score denominators, e.g. coco=143.3,okvqa=54.4", **define)
    flags.DEFINE_integer("eval_max_queries", 0, "queries per eval set (0 = all)", **define)
    flags.DEFINE_integer("eval_batch_size", 0, "evaluation batch size (0 = the evaluator's)", **define)
    flags.DEFINE_bool("seed_batching", True, "train a row's seeds as one batched program (false: one by one)", **define)
    flags.DEFINE_bool("list", False, "print the rows and their overrides, run nothing", **define)


def main(argv: Sequence[str] | None = None) -> int:
    """The `flamingo-ablate` console script; argv without the program name (default sys.argv[1:])."""
    f, _ = parse_flags("python -m flamingo_jax.ablate", __doc__, argv, define_flags)
    config = f.config
    names = runnable_rows(config, f.rows)
    if f.list:
        for n in names:
            r = config.rows[n]
            status = "" if r.runnable else f"  [not runnable: {r.reason}]"
            print(f"{n:28s} {r.group:6s} {r.label}{status}")
            for path, value in r.overrides:
                print(f"    {path} = {value if not hasattr(value, 'to_dict') else value.to_dict()}")
        return 0
    os.makedirs(f.workdir, exist_ok=True)
    enable_compilation_cache(os.path.join(f.workdir, "jax_cache"))
    eval_kwargs = {k: v for k, v in (("max_queries", f.eval_max_queries), ("batch_size", f.eval_batch_size)) if v}
    run_table(config, f.workdir, names, f.seeds, f.evaluator or None, parse_denominators(f.denominators),
              eval_kwargs=eval_kwargs, seed_batching=f.seed_batching)
    print(f"[ablate] wrote {os.path.join(f.workdir, config.table)}.{{md,csv,tex,png}}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
