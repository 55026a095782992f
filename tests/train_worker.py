"""Runs the tiny training config on given meshes and prints, per mesh, what each step did as JSON (one line).

Used by test_train.py in subprocesses with simulated devices and, for the multi-host test, under
jax.distributed: python tests/train_worker.py --meshes 8,1,1;2,4,1 --steps 3 [--process I --of N --port P]
[--resume_at K --workdir DIR]. test_train.py also imports `run_steps` for its one-device reference.

Per mesh: the losses, the gradients' and the proposed updates' global norms of every step, and `moved`, the
global norm of (final - initial) trainable params. With --resume_at K (one process) the first mesh also saves a
checkpoint after step K in DIR, and every later mesh, after its own run, restores that checkpoint (saved on the
first mesh) onto its own mesh and goes on to the last step: `resumed` holds those steps' records.
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(__file__)))

STEP_KEYS = ("loss", "grad_norm", "update_norm")


def copy_tree(tree):
    """A copy of a tree of jax.Arrays in new buffers (the train step donates the state)."""
    import jax

    return jax.tree.map(lambda x: x.copy(), tree)


def run_steps(trainer, data, steps, lr_scale=1.0, save=None, since=None):
    """`steps` updates of `trainer` on `data` (lr x lr_scale) -> {key: [per step]} for STEP_KEYS, `moved` (global
    norm of the trainable params' change) and with `since` (an update count) `moved_since`, the change after
    that many of these updates. save(step, trainer, data) is called after every step."""
    import jax
    import jax.numpy as jnp
    import optax

    from flamingo_jax import sharding

    distance = jax.jit(lambda a, b: optax.global_norm(jax.tree.map(jnp.subtract, a, b)),
                       out_shardings=sharding.replicated(trainer.mesh))
    before = copy_tree(trainer.state["trainable"])
    mid = before if since == 0 else None
    out = {k: [] for k in STEP_KEYS}
    for i in range(steps):
        metrics = trainer.train_step(next(data), lr_scale)
        for k in STEP_KEYS:
            out[k].append(float(metrics[k]))
        if since == i + 1:
            mid = copy_tree(trainer.state["trainable"])
        if save is not None:
            save(int(trainer.state["step"]), trainer, data)
    out["moved"] = float(distance(trainer.state["trainable"], before))
    if mid is not None:
        out["moved_since"] = float(distance(trainer.state["trainable"], mid))
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--meshes", required=True)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--process", type=int, default=0)
    ap.add_argument("--of", type=int, default=1)
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--resume_at", type=int, default=0)
    ap.add_argument("--workdir", default="")
    args = ap.parse_args()
    import jax
    if args.of > 1:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(f"127.0.0.1:{args.port}", num_processes=args.of, process_id=args.process)
    from flamingo_jax import checkpoint
    from flamingo_jax.train import Trainer, make_data_iterator
    from tiny import tiny_train_config

    def save_at_k(step, trainer, data):
        if step == args.resume_at:
            ck = checkpoint.Checkpoints(args.workdir, trainer.config, trainer.mesh)
            ck.save(step, trainer.state, data.get_state())
            ck.close()

    out = {}
    for i, mesh in enumerate(args.meshes.split(";")):
        config = tiny_train_config(total_steps=args.steps, mesh=tuple(int(x) for x in mesh.split(",")))
        trainer = Trainer.create(config)
        data = make_data_iterator(config, jax.process_index(), jax.process_count())
        out[mesh] = run_steps(trainer, data, args.steps, save=save_at_k if args.resume_at and i == 0 else None)
        if args.resume_at and i > 0:  # the first mesh's checkpoint, restored onto this mesh, trained on
            restored = checkpoint.Checkpoints(args.workdir, config, trainer.mesh).restore(trainer.state)
            assert restored.step == args.resume_at, restored.step
            trainer.state = restored.state
            data = make_data_iterator(config, jax.process_index(), jax.process_count())
            data.set_state(restored.data_state)
            out[mesh]["resumed"] = run_steps(trainer, data, args.steps - args.resume_at)
    if jax.process_index() == 0:
        print("RECORDS " + json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
