"""What the step checkpoints' checksums cost: save and restore time with and without them, ONE JSON line.

    python benchmarks/checkpoint_checksums.py --preset wide [--rounds 2]

The train state of the preset (trainable params + AdamW moments + counters, as the trainer saves it) is
filled with random values on device (zstd then has real work, as with trained weights) and saved with
flamingo_jax.checkpoint.Checkpoints synchronously (checkpoint_async=False: the whole write is timed), then
restored, with checkpoint_checksums on and off, in alternating order for --rounds rounds. Fields: medians
in seconds (save_s, restore_s per setting), checksum_s (the checksum pass alone, over the state on device),
state_bytes, and the relative overheads.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import ml_collections  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--preset", default="wide")
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args()

    import flax.linen as nn

    from benchmarks.presets import preset_config
    from flamingo_jax import checkpoint, models, optim
    from flamingo_jax.train_state import dummy_inputs
    from flamingo_jax.train_step import init_state

    config = preset_config(args.preset)
    model = models.build(config.model)
    abstract = nn.meta.unbox(
        jax.eval_shape(lambda r: model.init(r, *dummy_inputs(config.model)), jax.random.key(0))["params"])
    trainable, _ = optim.partition(abstract, config.trainable)
    tx, _ = optim.make_optimizer(config.optimizer, trainable, config.total_steps)
    shapes = jax.eval_shape(lambda t: init_state(t, tx, jax.random.key(0)), trainable)
    leaves, treedef = jax.tree.flatten(shapes)
    keys = jax.random.split(jax.random.key(1), len(leaves))
    filled = [
        jax.random.normal(k, x.shape, x.dtype) if jnp.issubdtype(x.dtype, jnp.floating) else jnp.zeros(
            x.shape, x.dtype) for k, x in zip(keys, leaves) if not jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)
    ]
    it = iter(filled)
    state = jax.tree.unflatten(
        treedef,
        [jax.random.key(0) if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key) else next(it) for x in leaves])
    jax.block_until_ready(state)
    state_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(checkpoint.storable(state)))

    checkpoint.checksums(checkpoint.storable(state))  # compile
    t = []
    for _ in range(3):
        t0 = time.perf_counter()
        checkpoint.checksums(checkpoint.storable(state))
        t.append(time.perf_counter() - t0)
    checksum_s = statistics.median(t)

    base = dict(checkpoint_every=1, checkpoint_every_minutes=0.0, checkpoint_keep=1, checkpoint_keep_every=0,
                checkpoint_async=False, pretrained=dict(vision="", lm=""), trainable=list(config.trainable))
    times = {True: {"save": [], "restore": []}, False: {"save": [], "restore": []}}
    root = tempfile.mkdtemp(prefix="ckpt_checksums_", dir=os.environ.get("BENCH_DIR"))
    try:
        for r in range(args.rounds):
            for verify in ((True, False) if r % 2 == 0 else (False, True)):
                wd = os.path.join(root, f"r{r}_{verify}")
                c = ml_collections.ConfigDict({**base, "checkpoint_checksums": verify})
                ck = checkpoint.Checkpoints(wd, c)
                ck.frozen_manifest = {"fingerprint": ""}
                t0 = time.perf_counter()
                ck.save(1, state, {"step": 1})
                ck.wait()
                times[verify]["save"].append(time.perf_counter() - t0)
                ck.close()
                ck = checkpoint.Checkpoints(wd, c)
                ck.frozen_manifest = {"fingerprint": ""}
                t0 = time.perf_counter()
                restored = ck.restore(state)
                jax.block_until_ready(restored.state)
                times[verify]["restore"].append(time.perf_counter() - t0)
                ck.close()
                del restored
                shutil.rmtree(wd)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    med = {v: {k: statistics.median(x) for k, x in d.items()} for v, d in times.items()}
    print(
        json.dumps({
            "preset": args.preset,
            "state_bytes": state_bytes,
            "rounds": args.rounds,
            "checksum_s": checksum_s,
            "save_s": {"checksums": med[True]["save"], "none": med[False]["save"]},
            "restore_s": {"checksums": med[True]["restore"], "none": med[False]["restore"]},
            "save_overhead": med[True]["save"] / med[False]["save"] - 1,
            "restore_overhead": med[True]["restore"] / med[False]["restore"] - 1,
            "all_s": {str(k): v
                      for k, v in times.items()},
            "devices": str(jax.devices()[0].platform),
        }))


if __name__ == "__main__":
    main()
