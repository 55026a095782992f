"""Evaluates a trained tiny checkpoint (tests/test_eval_trained.py) under JAX_TRANSFER_GUARD=disallow and prints
what it measured as one JSON line, 'EVAL {...}'.

  --mode devices: one process with 8 simulated devices; the checkpoint restored into its shardings and
      evaluated on one device and on the mesh fsdp=4, model=2 (flamingo_jax.evaluate.evaluate), then through
      flamingo_jax.ablate.evaluate_row on that mesh.
  --mode process: one of several jax.distributed processes (--coordinator_address, --num_processes,
      --process_id) evaluating on the mesh fsdp=4, model=2 over all of their devices; process 0 prints.

Besides the world's tasks every run evaluates one cell whose queries rank their own options (VisDial, kind
'dialog', on its builder's dummy files: two rounds of 100 options each, different per round), prepared once
by prepare_options before the workers start.

Each run's scores and every cell's outputs (predictions and beam or option log-likelihoods) are printed.
"""

import argparse
import glob
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

RANDOM_SHOTS = (0, 4)
RICES = ("vqa", 4)  # one RICES cell: support features of the whole pool, query features per batch
OPTIONS = ("visdial", 0)  # one cell ranking each query's own options (zero-shot: the world's 0-shot compiles)


def options_entry():
    """VisDial's eval-set entry reading its builder's dummy files."""
    from flamingo_jax.data import builders, eval_sets

    entry = eval_sets.real_eval_sets()[OPTIONS[0]]
    entry.manual_dir = os.path.join(builders.builder_module(entry.builder).__path__[0], "dummy_data")
    return entry


def prepare_options(data_dir: str) -> None:
    """Prepares the options cell's TFDS builder in data_dir, once (processes would race on its files)."""
    from flamingo_jax.data import builders

    entry = options_entry()
    builders.prepare(entry.builder, entry.builder_config or None, data_dir, entry.manual_dir)


def config_for(data_dir: str, mesh: tuple[int, int, int], options: bool = True):
    """experiments/tiny.py (the model the checkpoint was trained with) on the tests' world data dir, with the
    options cell's eval set unless options=False."""
    from flamingo_jax.config_files import load_config

    config = load_config(os.path.join(os.path.dirname(__file__), "..", "experiments", "tiny.py"))
    config.data.data_dir = data_dir
    config.mesh.data, config.mesh.fsdp, config.mesh.model = mesh
    if options:
        with config.unlocked():
            config.data.eval_sets[OPTIONS[0]] = options_entry()
    return config


def run_cells(config, workdir: str, tasks, **kw) -> dict:
    """{'task/shots/selection': {'score', 'outputs'}} of evaluate() in `workdir` (primary process only)."""
    import jax

    from flamingo_jax import evaluate

    scores = {
        "random": evaluate.evaluate(config, workdir, tasks, RANDOM_SHOTS, **kw),
        "rices": evaluate.evaluate(config, workdir, [RICES[0]], [RICES[1]], selection="rices", **kw)
    }
    scores["random"].update(evaluate.evaluate(config, workdir, [OPTIONS[0]], [OPTIONS[1]], **kw))
    if jax.process_index():
        return {}
    out = {}
    cells = json.load(open(os.path.join(workdir, "eval", "results.json")))["cells"]
    for key, cell in cells.items():
        (path, ) = glob.glob(os.path.join(workdir, "eval", "cells", key, "shard-*.json"))
        name = f"{cell['task']}/{cell['shots']}/{cell['selection']}"
        out[name] = dict(score=cell["score"], outputs=json.load(open(path)),
                         returned=scores[cell["selection"]][cell["task"]][cell["shots"]])
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mode", choices=["devices", "process"], required=True)
    ap.add_argument("--train_dir", required=True)
    ap.add_argument("--data_dir", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--tasks", default="")
    ap.add_argument("--max_queries", type=int, default=4)
    ap.add_argument("--coordinator_address", default=None)
    ap.add_argument("--num_processes", type=int, default=None)
    ap.add_argument("--process_id", type=int, default=None)
    args = ap.parse_args()

    from flamingo_jax import cluster
    cluster.initialize(args.coordinator_address, args.num_processes, args.process_id)
    import jax
    import numpy as np

    assert jax.config.jax_transfer_guard == "disallow", "run with JAX_TRANSFER_GUARD=disallow"
    from flamingo_jax import ablate, checkpoint, evaluate, models, sharding
    from flamingo_jax.train_state import param_targets

    config = config_for(args.data_dir, (1, 4, 2))
    tasks = args.tasks.split(",") if args.tasks else [t for t in config.data.eval_sets if t != OPTIONS[0]]
    kw = dict(batch_size=4, num_beams=2, max_queries=args.max_queries, progress=False)
    if args.mode == "process":
        out = run_cells(config, os.path.join(args.out, "processes"), tasks, checkpoint=args.train_dir, **kw)
        if jax.process_index() == 0:
            print("EVAL " + json.dumps(dict(processes=jax.process_count(), devices=jax.device_count(), cells=out)),
                  flush=True)
        return

    host, _, step, _ = checkpoint.read_workdir(args.train_dir)  # the reference: read whole to host numpy
    gates = [
        float(np.max(np.abs(x))) for path, x in jax.tree_util.tree_flatten_with_path(host)[0]
        if str(path[-1].key).endswith("_gate")
    ]
    report = {"step": step, "max_abs_gate": max(gates)}  # gates start at exactly 0: nonzero once trained
    for name, mesh_cfg, devices in (("one", (1, 1, 1), jax.devices()[:1]), ("mesh", (1, 4, 2), jax.devices())):
        mesh = sharding.make_mesh(dict(zip(("data", "fsdp", "model"), mesh_cfg)), devices)
        params, step, checkpoint_id = evaluate.load_checkpoint(config, args.train_dir, mesh)
        target = param_targets(models.build(config.model), config.model, mesh)
        restored = dict(
            step=step,
            shardings_as_targets=jax.tree.all(jax.tree.map(lambda x, t: x.sharding == t.sharding, params, target)),
            sharded_leaves=sum(not x.sharding.is_fully_replicated
                               for x in jax.tree.leaves(params)), max_abs_diff_to_host=max(
                                   float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))
                                   for a, b in zip(jax.tree.leaves(jax.device_get(params)), jax.tree.leaves(host))),
            same_structure=jax.tree.structure(params) == jax.tree.structure(host))
        cells = run_cells(config, os.path.join(args.out, name), tasks, params=params, checkpoint_id=checkpoint_id, **kw)
        report[name] = dict(restored=restored, cells=cells)
    # flamingo_jax.ablate evaluates a row's run through the same path: its workdir's checkpoint, on the
    # config's mesh (fsdp=4, model=2), under the guard
    report["ablate"] = ablate.evaluate_row(config_for(args.data_dir, (1, 4, 2), options=False), args.train_dir, shots=0,
                                           **kw)
    print("EVAL " + json.dumps(report), flush=True)


if __name__ == "__main__":
    main()
