"""Runs the tiny training config on given meshes and prints per-step losses as JSON (one line).

Used by test_train.py in subprocesses with simulated devices and, for the multi-host test, under
jax.distributed: python tests/train_worker.py --meshes 8,1,1;2,4,1 --steps 3 [--process I --of N --port P]
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(__file__)))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--meshes", required=True)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--process", type=int, default=0)
    ap.add_argument("--of", type=int, default=1)
    ap.add_argument("--port", type=int, default=0)
    args = ap.parse_args()
    import jax
    if args.of > 1:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(f"127.0.0.1:{args.port}", num_processes=args.of, process_id=args.process)
    from flamingo_jax.train import Trainer, make_data_iterator
    from tiny import tiny_train_config

    out = {}
    for mesh in args.meshes.split(";"):
        config = tiny_train_config(total_steps=args.steps, mesh=tuple(int(x) for x in mesh.split(",")))
        trainer = Trainer.create(config)
        data = make_data_iterator(config, jax.process_index(), jax.process_count())
        losses = [float(trainer.train_step(next(data))["loss"]) for _ in range(args.steps)]
        out[mesh] = losses
    if jax.process_index() == 0:
        print("LOSSES " + json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
