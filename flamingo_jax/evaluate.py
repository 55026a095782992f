"""Few-shot evaluation: python -m flamingo_jax.evaluate --config experiments/X.py[:arg] --workdir DIR
    [--checkpoint PATH] [--tasks captions,vqa,...|coco,vqav2,...] [--shots 0,4,8,16,32]
    [--selection random|rices] [--seeds 3] [--batch_size 8] [--max_queries N] [--num_shards N --shard_index I]
    [--ensemble K] [--protocol official|dev] [--text_only_shots]

--ensemble K: close-ended cells average each candidate's log-likelihood over K orders of the shots (the
paper's prompt ensembling, Appendix A.2; it used 6); they are stored as their own rows ('<selection>-ensembleK').
--text_only_shots: the shots without their images (text only, like the zero-shot prompt's examples), rows of their
own ('<selection>-textonly'): what the shots' images add to their text.
--protocol dev: support and queries carved from each eval set's training split (eval_sets.dev_protocol: 2048
support, 1024 queries, COCO 5000), the paper's DEV protocol; 'official' uses the entries' splits.

Writes DIR/eval/results.json and DIR/eval/results.md (mean +- std over seeds, in the tables' units: CIDEr
x100, accuracy and AUC in %). Each (task, shots, seed, selection, checkpoint) cell is cached: its shards'
predictions go to DIR/eval/cells/<cell>/shard-<i>-of-<n>.json and its score into results.json, so a rerun
skips finished cells (and finished shards of unfinished ones).

Params: --checkpoint PATH (a training workdir or its checkpoints; see load_checkpoint), else DIR's own
checkpoints if it has any (the ablation runner passes the training workdir), else a random init (a loud
warning: the numbers then measure nothing). They are restored straight into their shardings on the config's
mesh (--config.mesh.*; flamingo_jax.checkpoint.restore_params): no host ever holds the whole tree, and
params, batches and results move only by explicit transfers (runs under JAX_TRANSFER_GUARD=disallow).

Several processes under jax.distributed (the same command on every host: a SLURM / Open MPI / Cloud TPU /
Kubernetes job is detected as by the trainer, or --coordinator_address / --num_processes / --process_id):
the mesh spans every process's devices, the processes split each cell's queries round-robin (process i
builds and decodes queries i, i + n, ...; every batch is one program over the mesh), the outputs are
gathered to process 0 with a collective (flamingo_jax.evaluation.multihost says why not files), and
process 0 alone scores the cell and writes the results, once.

Independent processes without jax.distributed (each holding the whole model): --num_shards N --shard_index I;
each writes its shard's predictions and shard 0 waits for the files of the others (a shared DIR), then
scores the cell.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from typing import Any, Mapping, Sequence

import jax
import ml_collections
import numpy as np
from absl import app, flags, logging

from flamingo_jax.evaluation import harness
from flamingo_jax.files import write_json

TABLE_SCALE = 100.0

# ---------------------------------------------------------------------------------------------- params


def eval_mesh(config: ml_collections.ConfigDict) -> jax.sharding.Mesh:
    """The mesh evaluation runs on: config.mesh (every device of every process), else one data axis."""
    from flamingo_jax import sharding

    return sharding.make_mesh(config.mesh if "mesh" in config else dict(data=-1, fsdp=1, model=1))


def random_params(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh) -> dict:
    """Randomly initialised params (flamingo_jax.train_state.init_params: straight into their shardings on `mesh`)."""
    from flamingo_jax import models
    from flamingo_jax.train_state import init_params, make_key

    model = models.build(config.model)
    params, _, _ = init_params(model, config.model, mesh, make_key(config.get("seed", 0)))
    return params


def load_params(config: ml_collections.ConfigDict, path: str,
                mesh: jax.sharding.Mesh | None = None) -> tuple[dict, str]:
    """(params, checkpoint id) of the newest intact checkpoint under `path` (see load_checkpoint)."""
    params, _, checkpoint_id = load_checkpoint(config, path, mesh)
    return params, checkpoint_id


def load_checkpoint(config: ml_collections.ConfigDict, path: str,
                    mesh: jax.sharding.Mesh | None = None) -> tuple[dict, int, str]:
    """(params, step, checkpoint id) of the newest intact checkpoint under `path` (a training workdir or its
    checkpoints/), restored straight into their shardings on `mesh` (default: eval_mesh(config)): trainable
    params from the step checkpoint, frozen ones from the workdir's frozen store or the converted
    checkpoints it references (flamingo_jax.checkpoint.restore_params, which checks their hashes)."""
    from flamingo_jax import checkpoint, models
    from flamingo_jax.train_state import param_targets

    path = os.path.abspath(path)
    if os.path.basename(path) == "checkpoints":
        path = os.path.dirname(path)
    mesh = eval_mesh(config) if mesh is None else mesh
    target = param_targets(models.build(config.model), config.model, mesh)
    params, step = checkpoint.restore_params(path, config, target)
    checkpoint_id = f"{os.path.basename(path)}-step{step}-{hashlib.sha256(path.encode()).hexdigest()[:8]}"
    return params, int(step), checkpoint_id


def params_mesh(params: Any) -> jax.sharding.Mesh | None:
    """The mesh that `params` are sharded over (None: host arrays or one device's)."""
    leaf = jax.tree.leaves(params)[0]
    sh = getattr(leaf, "sharding", None)
    return sh.mesh if isinstance(sh, jax.sharding.NamedSharding) else None


def has_checkpoint(path: str) -> bool:
    d = os.path.join(path, "checkpoints")
    return os.path.isdir(d) and any(n.isdigit() for n in os.listdir(d))


# ---------------------------------------------------------------------------------------------- results


def cell_key(task: str, shots: int, seed: int, selection: str, checkpoint_id: str, settings: str) -> str:
    return f"{task}-{shots}shot-{selection}-seed{seed}-{checkpoint_id}-{settings}"


def run_settings(num_beams: int, length_penalty: float, max_queries: int, data_fingerprint: str) -> str:
    """What else decides a cell's score: the decoding, how many queries and the eval data (EvalData.fingerprint: the
    entries and the world that generates them). Part of its key, so that a cached cell is reused only by a run with
    the same settings (a rerun with another beam width, length penalty, --max_queries or world evaluates afresh),
    and of its summary group."""
    queries = f"q{max_queries}" if max_queries else "all"
    return f"beams{int(num_beams)}-lp{float(length_penalty):g}-{queries}-d{data_fingerprint}"


def decoding_settings(config: ml_collections.ConfigDict, num_beams: int | None = None,
                      length_penalty: float | None = None) -> tuple[int, float]:
    """(beams, length penalty) of open-ended decoding: the arguments, else config.evaluation's, else the paper's
    beam 3 without a length penalty."""
    decoding = config.get("evaluation") or {}
    return (int(decoding.get("num_beams", 3) if num_beams is None else num_beams),
            float(decoding.get("length_penalty", 0.0) if length_penalty is None else length_penalty))


def run_cells(workdir: str, checkpoint_id: str, selection: str, settings: str,
              seed: int = 0) -> dict[str, dict[int, dict]]:
    """{task: {shots: cell record}} of one run in DIR/eval/results.json (one support seed)."""
    out: dict = {}
    for c in Results(workdir).load()["cells"].values():
        if (c["checkpoint"], c["selection"], c.get("settings",
                                                   ""), c["seed"]) == (checkpoint_id, selection, settings, seed):
            out.setdefault(c["task"], {})[int(c["shots"])] = c
    return out


def cell_label(selection: str, ensemble: int, kind: str) -> str:
    """A cell's selection label: close-ended cells ensembled over K orders of the shots are rows of their own."""
    return f"{selection}-ensemble{ensemble}" if ensemble > 1 and kind in harness.CLOSE_ENDED else selection


def summarize_run(cells: Mapping[str, Mapping[str, Any]], checkpoint_id: str, selection: str, ensemble: int = 1,
                  settings: str | None = None) -> dict:
    """summarize() of one run's cells: the plain ones, with its ensembled close-ended cells in their place."""
    out = summarize(cells, checkpoint_id, selection, settings)
    if ensemble > 1:
        out.update(summarize(cells, checkpoint_id, f"{selection}-ensemble{ensemble}", settings))
    return out


class Results:
    """DIR/eval/results.json: {'cells': {key: {...}}}; written atomically by shard 0."""

    def __init__(self, workdir: str):
        self.dir = os.path.join(workdir, "eval")
        self.path = os.path.join(self.dir, "results.json")
        os.makedirs(self.dir, exist_ok=True)

    def load(self) -> dict:
        if os.path.exists(self.path):
            with open(self.path) as f:
                return json.load(f)
        return {"cells": {}}

    def save(self, data: dict) -> None:
        write_json(self.path, data, indent=1, sort_keys=True)

    def shard_path(self, key: str, shard: tuple[int, int]) -> str:
        return os.path.join(self.dir, "cells", key, f"shard-{shard[0]}-of-{shard[1]}.json")


def _write_shard(path: str, outputs: list[dict]) -> None:
    """A cell shard's predictions (one JSON list), atomically: shard 0 may be waiting for the file."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    write_json(path, outputs, indent=None)


def summarize(cells: Mapping[str, Mapping[str, Any]], checkpoint_id: str, selection: str,
              settings: str | None = None) -> dict:
    """{task: {shots: {'mean', 'std', 'seeds', 'metric'}}} in the tables' units, for one checkpoint (and, when
    given, one run_settings)."""
    groups: dict = {}
    for c in cells.values():
        if c["checkpoint"] != checkpoint_id or c["selection"] != selection:
            continue
        if settings is not None and c.get("settings", "") != settings:
            continue
        groups.setdefault(c["task"], {}).setdefault(int(c["shots"]), []).append(c)
    out = {}
    for task, by_shots in groups.items():
        out[task] = {}
        for shots, cs in sorted(by_shots.items()):
            vals = np.array([TABLE_SCALE * c["score"] for c in cs])
            std = float(vals.std(ddof=1)) if len(vals) > 1 else 0.0  # sample std, as flamingo_jax.ablations_table
            out[task][shots] = dict(mean=float(vals.mean()), std=std, seeds=len(vals), metric=cs[0]["metric"])
            if len(cs) == 1 and cs[0].get("ci95"):  # one support seed: the interval over its queries
                out[task][shots]["ci95"] = [TABLE_SCALE * v for v in cs[0]["ci95"]]
    return out


def markdown(summary: Mapping[str, Mapping[int, Mapping[str, Any]]], title: str) -> str:
    shots = sorted({s for t in summary.values() for s in t})
    lines = [
        f"# {title}", "", "| task | metric | " + " | ".join(f"{s}-shot" for s in shots) + " |",
        "|---|---|" + "---|" * len(shots)
    ]
    for task in sorted(summary):
        row = summary[task]
        metric = next(iter(row.values()))["metric"]
        cells = []
        for s in shots:
            if s in row:
                r = row[s]
                spread = f" ± {r['std']:.1f}" if r["seeds"] > 1 else ""
                if "ci95" in r:
                    spread = f" [{r['ci95'][0]:.1f}, {r['ci95'][1]:.1f}]"
                cells.append(f"{r['mean']:.1f}" + spread)
            else:
                cells.append("")
        lines.append(f"| {task} | {metric} | " + " | ".join(cells) + " |")
    lines += [
        "", "CIDEr x100; VQA accuracy, top-1 and ROC-AUC in %; mean ± sample std (ddof 1) over seeds; with one seed, "
        "[the 95% bootstrap interval over the queries]."
    ]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------- driver


def evaluate(config: ml_collections.ConfigDict, workdir: str, tasks: Sequence[str] | None = None,
             shots: Sequence[int] = (0, 4, 8, 16,
                                     32), *, seeds: int = 1, selection: str = "random", checkpoint: str | None = None,
             params: Any = None, checkpoint_id: str | None = None, batch_size: int = 8, num_beams: int | None = None,
             length_penalty: float | None = None, max_queries: int = 0, shard: tuple[int, int] | None = None,
             progress: bool = True, vocab=None, ensemble: int = 1, wait_timeout_s: float = 3600.0,
             mesh: jax.sharding.Mesh | None = None, text_only_shots: bool = False) -> dict:
    """Runs every (task, shots, seed) cell not yet in DIR/eval/results.json; returns
    {task: {shots: mean score over seeds as a fraction}} (flamingo_jax.ablate's evaluator convention).

    num_beams / length_penalty: open-ended decoding; None takes config.evaluation's (the paper's beam 3 and no
    length penalty by default; experiments/world.py normalises by length).
    text_only_shots: the shots are shown without their media (their text only, as the zero-shot prompt's
    examples); the cells are rows of their own ('<selection>-textonly').
    mesh: where loaded params go (default eval_mesh(config)); given params run on the mesh they are sharded
    over (host or single-device params: on one device, as before). A mesh spanning several processes makes
    every cell a collective of all of them (see the module docstring); `shard` is then theirs."""
    from flamingo_jax import models, sharding
    from flamingo_jax.evaluation import multihost

    if params is None:
        mesh = eval_mesh(config) if mesh is None else mesh
        if checkpoint or has_checkpoint(workdir):
            params, checkpoint_id = load_params(config, checkpoint or workdir, mesh)
        else:
            logging.warning("no --checkpoint and no checkpoint in %s: evaluating RANDOMLY INITIALISED params", workdir)
            params = random_params(config, mesh)
            checkpoint_id = f"random-init-seed{config.get('seed', 0)}"
    else:
        mesh = params_mesh(params)
    checkpoint_id = checkpoint_id or "params"
    num_beams, length_penalty = decoding_settings(config, num_beams, length_penalty)
    collective = multihost.process_count(mesh) > 1
    if collective:
        if shard is not None and tuple(shard) != (jax.process_index(), jax.process_count()):
            raise ValueError(f"the mesh spans {jax.process_count()} processes, which split the queries "
                             f"themselves: drop --num_shards / --shard_index (got shard {shard})")
        shard = (jax.process_index(), jax.process_count())
    shard = shard or (jax.process_index(), jax.process_count())
    if mesh is not None:
        sharding.batch_size_divides(batch_size, mesh, "evaluation (--batch_size)")
    primary = shard[0] == 0
    data = harness.EvalData(config.data, vocab=vocab)
    settings = run_settings(num_beams, length_penalty, max_queries, data.fingerprint())
    tasks = [data.resolve(t) for t in (tasks or list(config.data.eval_sets))]
    results = Results(workdir)
    evaluator = harness.Evaluator(models.build(config.model), params, data, batch_size=batch_size, num_beams=num_beams,
                                  length_penalty=length_penalty, ensemble=ensemble,
                                  cache_dir=os.path.join(workdir, "eval", "rices_cache"), progress=progress, mesh=mesh,
                                  text_only_shots=text_only_shots)
    shown = f"{selection}-textonly" if text_only_shots else selection  # the cells' selection label
    for task in tasks:
        for n_shots in shots:
            for seed in range(seeds):
                label = cell_label(shown, ensemble, data.kind(task))
                key = cell_key(task, n_shots, seed, label, checkpoint_id, settings)
                cached = key in results.load()["cells"] if primary or not collective else False
                if multihost.from_process_0(cached) if collective else cached:  # every process skips, or none
                    logging.info("cached: %s", key)
                    continue
                t0 = time.time()
                if collective:  # one collective per cell; the outputs gathered to process 0
                    outs = evaluator.predict(task, n_shots, seed, selection, shard, max_queries)
                    parts = multihost.allgather_json(outs)
                    if not primary:
                        continue
                    outputs = sorted((o for part in parts for o in part), key=lambda o: o["index"])
                    _write_shard(results.shard_path(key, (0, 1)), outputs)  # the cell's predictions, once
                else:
                    path = results.shard_path(key, shard)
                    if not os.path.exists(path):
                        outs = evaluator.predict(task, n_shots, seed, selection, shard, max_queries)
                        _write_shard(path, outs)
                    if not primary:
                        continue
                    outputs = _gather(results, key, shard[1], wait_timeout_s)
                score = evaluator.score(task, outputs)
                # per-query scores (their mean is the score) and the score's 95% bootstrap interval over the
                # queries: what evaluation.bootstrap pairs across shot counts (reproduce's intervals)
                per_query = evaluator.per_query(task, outputs)
                ci95 = evaluator.interval(task, outputs, per_query)
                data_ = results.load()
                data_["cells"][key] = dict(task=task, shots=n_shots, seed=seed, selection=label,
                                           checkpoint=checkpoint_id, settings=settings, metric=data.metric(task),
                                           score=score, queries=len(outputs), seconds=round(time.time() - t0, 1),
                                           query_index=[o["index"] for o in outputs], per_query=_rounded(per_query),
                                           ci95=_rounded(ci95))
                groups = sorted({(c["checkpoint"], c["selection"], c.get("settings", ""))
                                 for c in data_["cells"].values()})
                data_["summary"] = {
                    f"{ck}/{sel}/{st}": summarize(data_["cells"], ck, sel, st)
                    for ck, sel, st in groups
                }
                results.save(data_)
                with open(os.path.join(results.dir, "results.md"), "w") as f:
                    f.write("\n".join(
                        markdown(data_["summary"][f"{ck}/{sel}/{st}"], f"Few-shot results: {ck} ({sel} support, {st})")
                        for ck, sel, st in groups))
                logging.info("%s: %s = %.4f", key, data.metric(task), score)
    rows = []
    if primary or not collective:
        summary = summarize_run(results.load()["cells"], checkpoint_id, shown, ensemble, settings)
        rows = [(t, s, v["mean"] / TABLE_SCALE) for t, by in summary.items() if t in tasks for s, v in by.items()]
    if collective:  # process 0 read the results; the others get the same answer
        rows = multihost.from_process_0(rows)
    out: dict = {}
    for t, s, v in rows:
        out.setdefault(t, {})[int(s)] = v
    return out


def _rounded(values) -> list[float] | None:
    return None if values is None else [round(float(v), 6) for v in values]


def _gather(results: Results, key: str, num_shards: int, timeout_s: float) -> list[dict]:
    deadline = time.time() + timeout_s
    outputs = []
    for i in range(num_shards):
        path = results.shard_path(key, (i, num_shards))
        while not os.path.exists(path):
            if time.time() > deadline:
                raise TimeoutError(f"shard {i} of {key} did not appear in {timeout_s:.0f}s: is its process running?")
            time.sleep(2.0)
        with open(path) as f:
            outputs += json.load(f)
    return sorted(outputs, key=lambda o: o["index"])


# ---------------------------------------------------------------------------------------------- CLI


def _define_flags():
    from ml_collections import config_flags

    config_flags.DEFINE_config_file("config", None, "experiment config file[:arg]", lock_config=True)
    flags.DEFINE_string("workdir", None, "results go to WORKDIR/eval")
    flags.DEFINE_string("checkpoint", None, "training workdir whose newest checkpoint is evaluated")
    flags.DEFINE_list("tasks", None, "eval sets (config.data.eval_sets names or coco,vqav2,okvqa,msvdqa,vatex)")
    flags.DEFINE_list("shots", ["0", "4", "8", "16", "32"], "numbers of shots")
    flags.DEFINE_enum("selection", "random", ["random", "rices"], "how support examples are chosen")
    flags.DEFINE_integer("seeds", 1, "seeds per cell (support draws)")
    flags.DEFINE_bool("text_only_shots", False, "show the shots without their images (their text only)")
    flags.DEFINE_integer("batch_size", 8, "queries per batch")
    flags.DEFINE_integer("num_beams", None, "beam width (1 = greedy); default: config.evaluation.num_beams")
    flags.DEFINE_float(
        "length_penalty", None, "beam scores are sum log p / length ** length_penalty; default: "
        "config.evaluation.length_penalty")
    flags.DEFINE_integer("ensemble", 1, "close-ended tasks: average log-likelihoods over K orders of the shots")
    flags.DEFINE_enum("protocol", "official", ["official", "dev"],
                      "dev: support and queries carved from the training splits (the paper's DEV protocol)")
    flags.DEFINE_integer("max_queries", 0, "evaluate only the first N queries of each set (0 = all)")
    flags.DEFINE_integer("num_shards", None, "independent processes (no jax.distributed) sharing the queries")
    flags.DEFINE_integer("shard_index", None, "this independent process's shard")
    # the trainer's multi-process flags (flamingo_jax.cluster)
    flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (jax.distributed)")
    flags.DEFINE_integer("num_processes", None, "number of processes (jax.distributed)")
    flags.DEFINE_integer("process_id", None, "this process's index (jax.distributed)")


def main(argv):
    del argv
    f = flags.FLAGS
    if not f.workdir:
        raise app.UsageError("--workdir is required")
    from flamingo_jax import cluster

    # jax.distributed before any device is touched: from the flags, JAX_* variables or a detected cluster
    cluster.initialize(f.coordinator_address, f.num_processes, f.process_id)
    shard = None
    if f.num_shards is not None:
        shard = (f.shard_index or 0, f.num_shards)
    if f.protocol == "dev":
        from flamingo_jax.data import eval_sets

        f.config.data.eval_sets = eval_sets.dev_protocol(f.config.data.eval_sets)
    out = evaluate(f.config, f.workdir, f.tasks, [int(s) for s in f.shots], seeds=f.seeds, selection=f.selection,
                   checkpoint=f.checkpoint, batch_size=f.batch_size, num_beams=f.num_beams,
                   length_penalty=f.length_penalty, max_queries=f.max_queries, shard=shard, ensemble=f.ensemble,
                   text_only_shots=f.text_only_shots)
    if jax.process_index() == 0 and (shard is None or shard[0] == 0):
        print(open(os.path.join(f.workdir, "eval", "results.md")).read() if out else "no cells evaluated")
        print(json.dumps({"results": out}))


def run() -> None:
    """The `flamingo-evaluate` console script (pyproject.toml); `--config experiments/X.py` also finds the
    installed configs (flamingo_jax.config_files)."""
    from flamingo_jax.config_files import resolve_argv

    _define_flags()
    app.run(main, flags_parser=lambda argv: app.parse_flags_with_usage(resolve_argv(argv)))


if __name__ == "__main__":
    run()
