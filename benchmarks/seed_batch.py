"""Seed batching's speed: one seed's train step alone against N seeds in one vmapped step, as ONE JSON line.

    python benchmarks/seed_batch.py [--config experiments/world.py[:arg]] [--seeds 3] [--steps 8] [--rounds 3]
                                    [--frozen shared|stacked]

Both sides time the code runs use: `train.Trainer.train_step` for one seed (host batches -> global arrays,
donated state, forward + backward through the trainable tree + AdamW) and `seed_batch.SeedBatch.train_step`
for N seeds (the same, the N batches stacked, the step vmapped over the seeds). Batches have the config's
shapes, drawn from the synthetic source before timing (config.data.source = 'synthetic': the data pipeline is
not timed). Each round times `--steps` steps of one seed, then of the batch (throughput: the steps are
dispatched back to back and the state is waited for at the end); the first call of each compiles.
--frozen shared: the frozen towers are the same for every seed (what seed batching does with config.pretrained
towers, as `ablate` uses them); stacked: each seed's own random towers (a config without pretrained paths).

Fields: single_step_ms and batched_step_ms (medians over rounds of each round's mean step), ratio =
batched_step_ms / (seeds * single_step_ms) (under 1: batching is cheaper than running the seeds one after
the other), with --reference wide_batch_step_ms (one seed at seeds x the batch: no seed axis, the same
examples per step as the batched program: what the step costs when only its size grows), per-round values,
compile seconds, peak RSS, the load average before and after (the machine may be shared: the numbers are
then indicative).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import resource
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402

from flamingo_jax.config_files import load_config  # noqa: E402
from flamingo_jax.configs import seeded  # noqa: E402
from flamingo_jax.seed_batch import SeedBatch  # noqa: E402
from flamingo_jax.train import Trainer, make_data_iterator, make_step, mesh_and_model  # noqa: E402
from flamingo_jax.train_state import initial_state  # noqa: E402


def timed(fn, batches) -> float:
    """Mean seconds per step of fn over `batches`, dispatched back to back, waiting once at the end."""
    t0 = time.perf_counter()
    out = None
    for b in batches:
        out = fn(b)
    jax.block_until_ready(out)
    return (time.perf_counter() - t0) / len(batches)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="experiments/world.py")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--steps", type=int, default=8, help="timed steps per side and round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--frozen", choices=("shared", "stacked"), default="shared")
    p.add_argument(
        "--reference", action="store_true",
        help="also time one seed at seeds x the batch size (no seed axis: the same examples per step "
        "as the batched program, one set of weights)")
    args = p.parse_args()
    load_before = os.getloadavg()

    config = load_config(args.config)
    with config.unlocked():
        config.data.source = "synthetic"
    configs = [seeded(config, k) for k in range(args.seeds)]
    mesh, model = mesh_and_model(config)
    inits = [initial_state(c, model, mesh) for c in configs]
    step = make_step(config, model, inits[0].tx, inits[0].schedule)
    if args.frozen == "shared":
        shared, own = inits[0].frozen, [{} for _ in inits]
    else:
        shared, own = {}, [i.frozen for i in inits]
    batch = SeedBatch(mesh, step, [i.state for i in inits], shared, own)
    single = Trainer.create(configs[0])
    del inits, own

    datas = [make_data_iterator(c, 0, 1) for c in configs]
    total = 1 + args.rounds * args.steps
    stream = [[next(d) for d in datas] for _ in range(total)]

    t0 = time.perf_counter()
    jax.block_until_ready(single.train_step(stream[0][0]))
    compile_single = time.perf_counter() - t0
    t0 = time.perf_counter()
    jax.block_until_ready(batch.train_step(stream[0]))
    compile_batched = time.perf_counter() - t0

    wide = wide_stream = None
    if args.reference:
        wide_config = copy.deepcopy(configs[0])
        with wide_config.unlocked():
            for n in wide_config.data.mixture:
                wide_config.data.datasets[n].batch_size *= args.seeds
        wide = Trainer.create(wide_config)
        wide_data = make_data_iterator(wide_config, 0, 1)
        wide_stream = [next(wide_data) for _ in range(total)]
        jax.block_until_ready(wide.train_step(wide_stream[0]))

    rounds = []
    for r in range(args.rounds):
        part = slice(1 + r * args.steps, 1 + (r + 1) * args.steps)
        s = timed(lambda b: single.train_step(b[0]), stream[part])
        m = timed(batch.train_step, stream[part])
        rounds.append(
            dict(single_ms=round(1e3 * s, 2), batched_ms=round(1e3 * m, 2), ratio=round(m / (args.seeds * s), 3)))
        if wide is not None:
            w = timed(wide.train_step, wide_stream[part])
            rounds[-1].update(wide_batch_ms=round(1e3 * w, 2), wide_ratio=round(w / (args.seeds * s), 3))
    single_ms = statistics.median(r["single_ms"] for r in rounds)
    batched_ms = statistics.median(r["batched_ms"] for r in rounds)
    print(
        json.dumps(
            dict(config=args.config, seeds=args.seeds, frozen=args.frozen, steps_per_round=args.steps,
                 rounds=args.rounds, batch_sizes={n: config.data.datasets[n].batch_size
                                                  for n in config.data.mixture}, single_step_ms=single_ms,
                 batched_step_ms=batched_ms, ratio=round(batched_ms / (args.seeds * single_ms),
                                                         3), batched_ms_per_seed=round(batched_ms / args.seeds, 2),
                 wide_batch_step_ms=statistics.median(r["wide_batch_ms"] for r in rounds) if wide else None,
                 per_round=rounds, compile_s=dict(single=round(compile_single, 1), batched=round(compile_batched, 1)),
                 peak_rss_mb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                                   1), device=str(jax.devices()[0].device_kind), cpus=os.cpu_count(),
                 machine=platform.machine(), loadavg_before=[round(x, 2) for x in load_before],
                 loadavg_after=[round(x, 2) for x in os.getloadavg()], jax=jax.__version__)))


if __name__ == "__main__":
    main()
