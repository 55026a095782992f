"""The paper's whole pipeline at world scale, end to end: python -m flamingo_jax.reproduce --workdir DIR
    [--config experiments/world.py[:steps=300,...]] [--pretrain_steps 300] [--shots 0,4,8,16,32] [--max_queries 100]

Stages, in order (each prints its progress with a rate and an ETA, and records DIR/stages.json when done, so a
rerun skips finished stages and an interrupted one resumes from its own checkpoints):

  world           the generated world: trains its SentencePiece vocabulary (cached in the data dir), renders
                  the first examples of every training dataset and eval set (DIR/world/samples.png)
  pretrain_vision the frozen vision encoder, pretrained contrastively (CLIP-style two-way loss) on the world's
                  image-text pairs (flamingo_jax.pretrain)  -> DIR/pretrained/vision
  pretrain_lm     the frozen LM, next-token pretrained on the world's text corpus           -> DIR/pretrained/lm
  train           Flamingo on the world mixture (M3W / ALIGN / LTIP / VTP analogues, weights 1 / 0.2 / 0.2 /
                  0.03, accumulated into one update) with both towers frozen              -> DIR/train
  evaluate        few-shot on the five DEV analogues at 0, 4, 8, 16 and 32 shots (random support), the
                  newest intact checkpoint of DIR/train                                    -> DIR/train/eval
  report          DIR/report.md: scores, the overall score, stage times; DIR/loss_curves.png (training loss
                  per dataset) and DIR/score_vs_shots.png; DIR/report.json: the same numbers, machine-readable:
                  {"scores": {task: {shots: score}}, "overall": {shots: value}, "seconds": {stage: s, ...,
                  "total": s}, "config": the --config spec, "checkpoint_step": the evaluated step}, shots as
                  strings, scores in the tables' units (CIDEr x100, accuracy %), unrounded, null where missing;
                  "intervals": 95% bootstrap intervals over the queries of every score, of the overall score
                  and of its change from one shot count to the next (evaluation.bootstrap)

Everything is generated or trained here: nothing is downloaded. The config (experiments/world.py by default) is
the same world-scale baseline the ablation tables start from (experiments/ablations.py).
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from typing import Any, Callable, Mapping, Sequence

import ml_collections
import numpy as np
from absl import flags
from ml_collections import config_flags

from flamingo_jax import config_files
from flamingo_jax.ablate import enable_compilation_cache
from flamingo_jax.ablations_table import overall
from flamingo_jax.evaluation import bootstrap
from flamingo_jax.evaluation.paper_tables import DEV, SOTA, WORLD_TO_DEV
from flamingo_jax.files import read_metrics, write_json

STAGES = ("world", "pretrain_vision", "pretrain_lm", "train", "evaluate", "report")
DEFAULT_SHOTS = (0, 4, 8, 16, 32)


class StageLog:
    """DIR/stages.json: {stage: {'seconds': s, ...}} of the finished stages."""

    def __init__(self, workdir: str):
        self.path = os.path.join(workdir, "stages.json")
        self.done: dict[str, dict] = {}
        if os.path.isfile(self.path):
            with open(self.path) as f:
                self.done = json.load(f)

    def run(self, name: str, fn: Callable[[], Mapping[str, Any] | None]) -> dict:
        if name in self.done:
            print(f"[reproduce] {name}: done before ({self.done[name]['seconds']:.0f} s), skipped", flush=True)
            return self.done[name]
        print(f"[reproduce] {name} ...", flush=True)
        t0 = time.perf_counter()
        info = dict(fn() or {})
        info["seconds"] = round(time.perf_counter() - t0, 1)
        self.done[name] = info
        write_json(self.path, self.done, indent=1)
        print(f"[reproduce] {name}: done in {info['seconds']:.0f} s", flush=True)
        return info


# ---------------------------------------------------------------------------------------------- stages


def stage_world(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Trains (or loads) the world's vocabulary and renders the first examples of every training dataset and
    eval set into DIR/world/samples.{png,txt}. The world itself is generated on demand: record i of a subset is
    a pure function of (seed, subset, split, i), so nothing else has to be written."""
    from flamingo_jax.data import preview

    text, _ = preview.preview(config.data, 2, os.path.join(workdir, "world"), with_eval=True)
    return dict(summary=text.splitlines()[0])


def stage_pretrain(kind: str, config: ml_collections.ConfigDict, workdir: str, steps: int) -> dict:
    from flamingo_jax import pretrain

    out = os.path.join(workdir, "pretrained", kind)
    pretrain.pretrain_for(kind, config, out, steps=steps, seed=int(config.seed))
    return dict(path=out, final=pretrain.common.last_metrics(out))


def stage_train(config: ml_collections.ConfigDict, workdir: str) -> dict:
    from flamingo_jax.train import train

    last = train(config, os.path.join(workdir, "train"))
    if "preempted_at_step" in last:
        raise KeyboardInterrupt("training was interrupted: rerun the same command to resume")
    return dict(final=last)


def stage_evaluate(config: ml_collections.ConfigDict, workdir: str, shots: Sequence[int], max_queries: int,
                   batch_size: int) -> dict:
    from flamingo_jax.evaluate import decoding_settings, evaluate, load_checkpoint, run_cells, run_settings
    from flamingo_jax.evaluation.harness import data_fingerprint

    tasks = list(config.data.eval_sets)
    train_dir = os.path.join(workdir, "train")
    params, step, checkpoint_id = load_checkpoint(config, train_dir)  # what evaluate() would load itself
    scores = evaluate(config, train_dir, tasks=tasks, shots=list(shots), params=params, checkpoint_id=checkpoint_id,
                      max_queries=max_queries, batch_size=batch_size, progress=True)
    # The paper's RICES selection (Section 3.4 / Appendix A.2) at the largest shot count, beside random support:
    # retrieval should help, never hurt, once the model reads its shots.
    rices_shots = max(shots)
    rices = evaluate(config, train_dir, tasks=tasks, shots=[rices_shots], params=params, checkpoint_id=checkpoint_id,
                     max_queries=max_queries, batch_size=batch_size, progress=True, selection="rices")
    # {task: {shots: fraction}} -> {task: {shots: table units}}, the requested shots only (DIR/train/eval may
    # also hold cells of an earlier, interrupted invocation with other shots)
    beams, length_penalty = decoding_settings(config)
    settings = run_settings(beams, length_penalty, max_queries, data_fingerprint(config.data))
    cells = {
        t: {s: c
            for s, c in by.items() if s in shots}
        for t, by in run_cells(train_dir, checkpoint_id, "random", settings).items() if t in tasks
    }
    return dict(scores={t: {str(s): 100.0 * v
                            for s, v in by.items() if s in shots}
                        for t, by in scores.items()},
                rices={"shots": rices_shots,
                       "scores": {t: 100.0 * by[rices_shots]
                                  for t, by in rices.items()}}, checkpoint_step=step, intervals=score_intervals(cells))


def score_intervals(cells: Mapping[str, Mapping[int, Mapping[str, Any]]], n_draws: int = bootstrap.DRAWS) -> dict:
    """95% bootstrap intervals over the queries (evaluation.bootstrap), in the tables' units:
    {"scores": {task: {shots: [lo, hi]}}, "overall": {shots: [lo, hi]}, "overall_change": {"a->b": [lo, hi]},
    "draws": n, "level": 0.95}. Each task's cells are drawn on the same queries at every shot count, so a
    change from one shot count to the next is a paired difference; the overall score of a draw combines draw b
    of every task (their queries are independent samples). Tasks whose metric has no per-query scores are left
    out, and then so is the overall."""
    draws = {
        task: bootstrap.paired_draws({s: c["per_query"]
                                      for s, c in by.items()}, {s: c["query_index"]
                                                                for s, c in by.items()}, n_draws, seed=i)
        for i, (task, by) in enumerate(sorted(cells.items()))
        if by and all(c.get("per_query") is not None for c in by.values())
    }
    out: dict = {
        "scores": {
            t: {str(s): [100.0 * v for v in bootstrap.interval(d)]
                for s, d in sorted(by.items())}
            for t, by in draws.items()
        }, "draws": n_draws, "level": bootstrap.LEVEL
    }
    shots = sorted(set.intersection(*(set(by) for by in draws.values()))) if draws else []
    overall_draws = {
        s: np.array([
            overall({WORLD_TO_DEV[t]: 100.0 * draws[t][s][b]
                     for t in draws if t in WORLD_TO_DEV}) for b in range(n_draws)
        ])
        for s in shots
    }
    if overall_draws and all(np.isfinite(d).all() for d in overall_draws.values()):
        out["overall"] = {str(s): list(bootstrap.interval(d)) for s, d in overall_draws.items()}
        out["overall_change"] = {k: list(bootstrap.interval(d)) for k, d in bootstrap.changes(overall_draws).items()}
    return out


# ---------------------------------------------------------------------------------------------- report


def plot_losses(records: Sequence[Mapping[str, Any]], datasets: Sequence[str], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    steps = [r["step"] for r in records]
    for name in datasets:
        key = f"loss/{name}"
        if any(key in r for r in records):
            ax.plot(steps, [r.get(key, math.nan) for r in records], label=name)
    # no weighted total here: under the paper's per-sequence objective it is in nats per sequence, not per token
    ax.set_xlabel("update")
    ax.set_ylabel("training loss (nats / token)")
    ax.set_title("Flamingo training on the world mixture")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_scores(scores: Mapping[str, Mapping[str, float]], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for task, by in sorted(scores.items()):
        shots = sorted(int(s) for s in by)
        ax.plot(shots, [by[str(s)] for s in shots], "o-", label=f"{task} ({WORLD_TO_DEV.get(task, task)})")
    ax.set_xlabel("shots")
    ax.set_ylabel("score (CIDEr x100 / accuracy %)")
    ax.set_title("Few-shot scores vs number of shots")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def overall_by_shots(scores: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """{shots: overall score} with the paper's SotA denominators (ablations_table.overall)."""
    shots = sorted({s for by in scores.values() for s in by}, key=int)
    out = {}
    for s in shots:
        dev = {WORLD_TO_DEV[t]: by[s] for t, by in scores.items() if t in WORLD_TO_DEV and s in by}
        out[s] = overall(dev)
    return out


def stage_seconds(stages: Mapping[str, Mapping[str, Any]]) -> dict[str, float]:
    """{stage: seconds, ..., 'total': their sum} of the timed stages (all but the report), as recorded."""
    seconds = {name: float(stages[name]["seconds"]) for name in STAGES[:-1] if name in stages}
    seconds["total"] = round(sum(seconds.values()), 1)
    return seconds


def _span(interval: Sequence[float] | None) -> str:
    return "" if not interval else f"[{interval[0]:.1f}, {interval[1]:.1f}]"


def _json_number(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def write_report(config: ml_collections.ConfigDict, workdir: str, stages: Mapping[str, Mapping[str, Any]],
                 config_spec: str | None = None) -> dict:
    """DIR/report.md (+ its plots) and DIR/report.json, from the same numbers; returns {'overall': ...}."""
    records = read_metrics(os.path.join(workdir, "train", "metrics.jsonl"))
    plot_losses(records, list(config.data.mixture), os.path.join(workdir, "loss_curves.png"))
    scores = stages["evaluate"]["scores"]
    plot_scores(scores, os.path.join(workdir, "score_vs_shots.png"))
    shots = sorted({s for by in scores.values() for s in by}, key=int)
    overall_s = overall_by_shots(scores)
    seconds = stage_seconds(stages)
    lines = [
        "# flamingo_jax: the world-scale reproduction", "",
        "Generated by `python -m flamingo_jax.reproduce` (every number below was measured by this run).", "",
        "## Few-shot scores", "", "| task (DEV analogue) | metric | " + " | ".join(f"{s}-shot" for s in shots) + " |",
        "|---|---|" + "---|" * len(shots)
    ]
    for task in config.data.eval_sets:
        if task not in scores:
            continue
        metric = "CIDEr x100" if "caption" in task else "accuracy %"
        lines.append(f"| {task} ({WORLD_TO_DEV.get(task, task)}) | {metric} | " +
                     " | ".join(f"{scores[task].get(s, math.nan):.1f}" for s in shots) + " |")
    lines.append("| **overall** | % of the paper's SotA | " + " | ".join(f"{overall_s[s]:.1f}" for s in shots) + " |")
    intervals = stages["evaluate"].get("intervals") or {}
    if intervals.get("overall"):
        lines.append("| overall, 95% interval | over the queries | " +
                     " | ".join(_span(intervals["overall"].get(s)) for s in shots) + " |")
        lines += [
            "", "Change of the overall score from one shot count to the next, with its paired 95% interval (the same "
            "queries drawn at both shot counts): " +
            "; ".join(f"{k.replace('->', ' -> ')}: {overall_s[k.split('->')[1]] - overall_s[k.split('->')[0]]:+.1f} "
                      f"{_span(v)}" for k, v in intervals["overall_change"].items()) + ". An interval that holds 0 is "
            "a change within the sampling noise of the eval sets' queries."
        ]
    rices = stages["evaluate"].get("rices")
    rices_overall = None
    if rices:
        n = str(rices["shots"])
        rices_overall = overall_by_shots({t: {n: v} for t, v in rices["scores"].items()})[n]
        lines += [
            "", f"RICES support selection at {n} shots (the random-selection column above beside it):", "",
            "| task | random | RICES |", "|---|---|---|"
        ]
        for task, v in rices["scores"].items():
            lines.append(f"| {task} | {scores[task].get(n, math.nan):.1f} | {v:.1f} |")
        lines.append(f"| **overall** | {overall_s.get(n, math.nan):.1f} | {rices_overall:.1f} |")
    lines += [
        "", "Overall: the mean over the five tasks of 100 x score / the paper's fine-tuned SotA on the DEV "
        "benchmark the task stands in for (" + ", ".join(f"{d} {SOTA[d]}" for d in DEV) + "), as in the "
        "paper's ablation tables. World tasks are far easier than the real ones: compare rows and shots, "
        "not these numbers with the paper's.", "", "![score vs shots](score_vs_shots.png)", "", "## Training", ""
    ]
    if records:
        first, last = records[0], records[-1]
        lines.append(f"{last['step']} accumulated updates over {', '.join(config.data.mixture)}; loss "
                     f"{first.get('loss', math.nan):.3f} at step {first['step']} -> {last.get('loss', math.nan):.3f}.")
        per = [
            f"{n} {first.get(f'loss/{n}', math.nan):.3f} -> {last.get(f'loss/{n}', math.nan):.3f}"
            for n in config.data.mixture if f"loss/{n}" in last
        ]
        if per:
            lines.append("Per dataset: " + "; ".join(per) + ".")
    lines += ["", "![loss curves](loss_curves.png)", "", "## Pretrained towers (frozen during training)", ""]
    for kind in ("vision", "lm"):
        final = stages.get(f"pretrain_{kind}", {}).get("final", {})
        shown = {k: v for k, v in final.items() if isinstance(v, (int, float)) and k != "step"}
        lines.append(f"- {kind}: " + ", ".join(f"{k} {v:.4g}" for k, v in sorted(shown.items())))
    lines += ["", "## Stage times (this machine)", "", "| stage | seconds |", "|---|---|"]
    for name, sec in seconds.items():
        if name != "total":
            lines.append(f"| {name} | {sec:.0f} |")
    lines.append(f"| **total (before the report)** | {seconds['total']:.0f} |")
    lines += ["", "Resumed stages keep the time of the run that finished them."]
    with open(os.path.join(workdir, "report.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    report = {
        "scores": {
            task: {s: _json_number(scores[task].get(s))
                   for s in shots}
            for task in config.data.eval_sets if task in scores
        },
        "overall": {s: _json_number(overall_s[s])
                    for s in shots},
        "seconds": seconds,
        "config": config_spec,
        "checkpoint_step": stages["evaluate"].get("checkpoint_step"),
    }
    if intervals:
        report["intervals"] = intervals
    if rices:
        report["rices"] = {
            "shots": str(rices["shots"]), "scores": {t: _json_number(v)
                                                     for t, v in rices["scores"].items()},
            "overall": _json_number(rices_overall)
        }
    write_json(os.path.join(workdir, "report.json"), report, indent=1)  # no NaN in it: _json_number wrote null
    return dict(overall={s: round(v, 2) for s, v in overall_s.items()})


# ---------------------------------------------------------------------------------------------- driver


def prepared_config(config: ml_collections.ConfigDict, workdir: str) -> ml_collections.ConfigDict:
    """The experiment config with its frozen towers taken from DIR/pretrained."""
    config = ml_collections.ConfigDict(config.to_dict())
    config.pretrained.vision = os.path.join(workdir, "pretrained", "vision")
    config.pretrained.lm = os.path.join(workdir, "pretrained", "lm")
    config.lock()
    return config


def reproduce(config: ml_collections.ConfigDict, workdir: str, *, pretrain_steps: int = 300,
              shots: Sequence[int] = DEFAULT_SHOTS, max_queries: int = 100, eval_batch_size: int = 16,
              config_spec: str | None = None) -> dict:
    """Runs every stage not finished yet and writes the report; returns {stage: info}. config_spec: the
    --config the config came from (recorded in report.json)."""
    os.makedirs(workdir, exist_ok=True)
    config = prepared_config(config, workdir)
    log = StageLog(workdir)
    start = time.perf_counter()
    log.run("world", lambda: stage_world(config, workdir))
    log.run("pretrain_vision", lambda: stage_pretrain("vision", config, workdir, pretrain_steps))
    log.run("pretrain_lm", lambda: stage_pretrain("lm", config, workdir, pretrain_steps))
    log.run("train", lambda: stage_train(config, workdir))
    log.run("evaluate", lambda: stage_evaluate(config, workdir, shots, max_queries, eval_batch_size))
    info = write_report(config, workdir, log.done, config_spec)
    print(
        f"[reproduce] this invocation: {time.perf_counter() - start:.0f} s; overall by shots "
        f"{info['overall']}; report: {os.path.join(workdir, 'report.md')} (and report.json)", flush=True)
    return log.done


def define_flags(flag_values: flags.FlagValues, argv: list[str]) -> None:
    """The command line of the module docstring; `--config.x=v` overrides any field of the experiment config."""
    config_flags.DEFINE_config_file("config", config_files.find_config("experiments/world.py"),
                                    "experiment config file[:arg] (default experiments/world.py)",
                                    flag_values=flag_values, sys_argv=argv)
    define = dict(flag_values=flag_values)
    flags.DEFINE_string("workdir", None, "where every stage writes (rerun the same command to resume)", required=True,
                        **define)
    flags.DEFINE_integer("pretrain_steps", 300, "steps of each tower's pretraining", **define)
    flags.DEFINE_list("shots", [str(s) for s in DEFAULT_SHOTS], "comma-separated numbers of shots", **define)
    flags.DEFINE_integer("max_queries", 100, "queries per eval set (0 = all)", **define)
    flags.DEFINE_integer("eval_batch_size", 16, "evaluation batch size", **define)


def main(argv: Sequence[str] | None = None) -> int:
    """The `flamingo-reproduce` console script; argv without the program name (default sys.argv[1:])."""
    f, _ = config_files.parse_flags("python -m flamingo_jax.reproduce", __doc__, argv, define_flags)
    enable_compilation_cache(os.path.join(f.workdir, "jax_cache"))
    reproduce(f.config, f.workdir, pretrain_steps=f.pretrain_steps, shots=[int(s) for s in f.shots],
              max_queries=f.max_queries, eval_batch_size=f.eval_batch_size, config_spec=config_files.config_spec(f))
    return 0


if __name__ == "__main__":
    sys.exit(main())
