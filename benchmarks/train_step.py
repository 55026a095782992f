"""Train-step speed and memory on the OpenFlamingo-compatible presets, printed as ONE JSON line.

    python benchmarks/train_step.py --preset {tiny,small,wide} [--steps N] [--scan-layers]

Times `Trainer.train_step` (the trainer users run: sharded state, donated, host batches -> global arrays,
forward + backward through the trainable tree + AdamW) on a one-dataset synthetic mixture; batches are
generated before timing. Fields:
  step_ms_median, step_ms_min   over --steps timed steps after the first (compiling) one
  tokens_per_s                  B * L / median step
  model_flops_per_step          XLA cost_analysis of the compiled step (flops_source says so). It counts
                                every op, elementwise included, and does NOT multiply the bodies of
                                lax.scan / while loops by their trip counts: with --scan-layers it undercounts
                                (the presets use per-layer params, so the count is complete)
  matmul_flops_per_step         analytic count of the dense-layer and attention matmuls the step must do
                                (forward everywhere; input-gradients through the frozen LM, whose outputs
                                feed trainable layers; input- and weight-gradients in the trainable layers;
                                none for the vision tower), a cross-check of the XLA figure
  achieved_gflops, mfu          model_flops_per_step / median step, and that over peak_matmul_gflops
  peak_matmul_gflops            a 2048x2048 fp32 matmul timed before and after the run (the larger; both
                                are reported, the machine switches between two speed states)
  peak_rss_mb                   resource.getrusage maxrss of this process (includes XLA compilation)
  compile_s                     first step minus a median step
  state_bytes, frozen_bytes     trainable params + optimizer state bytes; frozen params bytes
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks.presets import PRESETS, preset_config  # noqa: E402
from flamingo_jax import optim  # noqa: E402
from flamingo_jax.train import Trainer, make_data_iterator, to_global  # noqa: E402

DEFAULT_STEPS = {"tiny": 30, "small": 10, "wide": 6}


def matmul_probe(n: int = 2048, reps: int = 10) -> float:
    """GFLOP/s of an n x n fp32 matmul (median of `reps` after a warm-up)."""
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
    f = jax.jit(jnp.dot)
    f(a, b).block_until_ready()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        f(a, b).block_until_ready()
        times.append(time.perf_counter() - t0)
    return 2 * n**3 / statistics.median(times) / 1e9


def analytic_matmul_flops(name: str) -> int:
    """Matmul FLOPs of one train step of preset `name` (see the module docstring). A multiply-add is 2."""
    p = PRESETS[name]
    b, l, n_img, d = p["B"], p["T"], p["n_img"], p["d"]
    vw, vl = p["vw"], p["vl"]
    s = (p["img"] // 8)**2  # patch tokens (class token dropped at the end; 1 extra inside the ViT)
    n = b * n_img  # images
    # vision forward: patch embed + per layer (qkvo 4 vw^2, FFW 8 vw^2 per token, attention 2 * S^2 * vw)
    vs = s + 1
    vision = 2 * n * s * (8 * 8 * 3) * vw + vl * (2 * n * vs * 12 * vw * vw + 2 * 2 * n * vs * vs * vw)
    # perceiver: 64 latents, inner 512, kv over S + 64 tokens; FFW 4 vw on latents
    k, inner = 64, 512
    kv = s + k
    per_layer = 2 * n * (k * vw * inner + 2 * kv * vw * inner + k * inner * vw)  # q, k, v, out
    per_layer += 2 * 2 * n * k * kv * inner  # scores and weighted sum
    per_layer += 2 * n * k * 2 * 4 * vw * vw  # FFW
    resampler = 6 * per_layer
    # cross-attention per LM layer: q/out d x 512 on tokens, k/v vw x 512 on visual tokens (all images),
    # attention over n_img * 64 visual tokens; FFW 4d dense on every token
    m = n_img * k
    xattn = 2 * b * (2 * l * d * inner + 2 * m * vw * inner) + 2 * 2 * b * l * m * inner + 2 * b * l * 8 * d * d
    # LM layer: qkvo 4 d^2, gated FFW 3 * 4 d^2, causal attention 2 * L^2 * d (computed dense)
    lm_layer = 2 * b * l * (4 * d * d + 12 * d * d) + 2 * 2 * b * l * l * d
    head = 2 * b * l * d * (512 + 3)
    layers = p["L"]
    fwd_lm = layers * (xattn + lm_layer) + head
    # backward: frozen LM and head -> input gradients only (1x forward); trainable xattn and resampler ->
    # input and weight gradients (2x forward); the first layer's xattn needs no input grad for tokens but
    # does for the visual tokens: ignore (small).
    bwd = layers * (2 * xattn + lm_layer) + head + 2 * resampler
    return int(vision + resampler + fwd_lm + bwd)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", choices=sorted(PRESETS), required=True)
    ap.add_argument("--steps", type=int, default=0, help="timed steps (default per preset)")
    ap.add_argument("--scan-layers", action="store_true", help="stacked layers under lax.scan")
    args = ap.parse_args()
    steps = args.steps or DEFAULT_STEPS[args.preset]

    probe_before = matmul_probe()
    config = preset_config(args.preset, scan_layers=args.scan_layers)
    t0 = time.perf_counter()
    trainer = Trainer.create(config)
    create_s = time.perf_counter() - t0
    data = make_data_iterator(config, 0, 1)
    batches = [next(data) for _ in range(2)]

    t0 = time.perf_counter()
    metrics = trainer.train_step(batches[0])
    jax.block_until_ready((trainer.state, metrics))
    first_s = time.perf_counter() - t0
    times = []
    for i in range(steps):
        t0 = time.perf_counter()
        metrics = trainer.train_step(batches[(i + 1) % len(batches)])
        jax.block_until_ready((trainer.state, metrics))
        times.append(time.perf_counter() - t0)
    loss = float(metrics["loss"])
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # before the AOT compile below
    probe_after = matmul_probe()

    # FLOPs from the compiled step: a separate AOT compile of the same jitted function, after the timing.
    compiled = trainer.step_fn.lower(trainer.state, trainer.frozen, to_global(batches[0], trainer.mesh),
                                     np.float32(1.0)).compile()  # lr_scale, as Trainer.train_step passes it
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    flops = float(cost.get("flops", 0.0))
    del compiled

    step_s = statistics.median(times)
    p = PRESETS[args.preset]
    peak = max(probe_before, probe_after)
    achieved = flops / step_s / 1e9
    state_bytes = optim.tree_bytes(trainer.state["trainable"]) + optim.tree_bytes(trainer.state["opt_state"])
    out = dict(
        benchmark="train_step",
        preset=args.preset,
        scan_layers=args.scan_layers,
        steps=steps,
        step_ms_median=round(step_s * 1e3, 2),
        step_ms_min=round(min(times) * 1e3, 2),
        tokens_per_s=round(p["B"] * p["T"] / step_s, 1),
        model_flops_per_step=int(flops),
        flops_source="xla_cost_analysis",
        matmul_flops_per_step=analytic_matmul_flops(args.preset),
        achieved_gflops=round(achieved, 1),
        peak_matmul_gflops=round(peak, 1),
        peak_matmul_gflops_before=round(probe_before, 1),
        peak_matmul_gflops_after=round(probe_after, 1),
        mfu=round(achieved / peak, 3),
        peak_rss_mb=round(peak_rss_mb, 1),
        compile_s=round(first_s - step_s, 2),
        create_s=round(create_s, 2),
        state_bytes=int(state_bytes),
        frozen_bytes=int(optim.tree_bytes(trainer.frozen)),
        trainable_params=int(sum(x.size for x in jax.tree.leaves(trainer.state["trainable"]))),
        loss=round(loss, 4),
        batch=p["B"],
        seq_len=p["T"],
        images_per_seq=p["n_img"],
        jax=jax.__version__,
        cpus=os.cpu_count(),
        machine=platform.machine(),
        ld_preload=os.environ.get("LD_PRELOAD", ""),
    )
    print(json.dumps(out))


if __name__ == "__main__":
    main()
