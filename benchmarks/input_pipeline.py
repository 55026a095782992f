"""Input pipeline throughput: examples/s per dataset and mixture steps/s, printed as one JSON line each.

    python benchmarks/input_pipeline.py [--config experiments/tiny.py] [--source world|tfds] [--seconds 10]
                                        [--threads 2] [--workers 0]
    python benchmarks/input_pipeline.py --real DIR [--workers 1,2,4] [--docs 400] [--seconds 10]
    python benchmarks/input_pipeline.py --requirement [--mfu 0.5]

Measures each dataset's iterator alone (after one warm-up batch, which also starts any worker processes),
so the figure is what that dataset's preprocessing (decode, resize/pad, augment, tokenise, window) sustains
on this machine, then the whole mixture (steps/s, one batch of every dataset per step in 'accumulate' mode)
to compare with the trainer's step rate.

--real DIR: real formats at the paper's resolution: generated MMC4 WebDataset shards (M3W: 5 images per
256-token window), LAION-style pair shards (ALIGN seq 32, LTIP seq 64) and 8-frame clips (VTP), all
320x320 JPEGs (flamingo_jax.data.fake_corpora), written to DIR and prepared once (TFDS array_record),
measured with each grain worker count of --workers (0 = threads only).

--requirement: what ONE host must deliver to keep Flamingo-3B / 9B at the configs' batch sizes running at
--mfu of a TPU v5e-256 slice, with the arithmetic (model FLOPs per step from the configs' parameter counts;
the frozen NFNet-F6's from XLA's cost analysis of one 320x320 forward).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from flamingo_jax.data import config as config_lib  # noqa: E402
from flamingo_jax.data import mixture  # noqa: E402


def measure(data_config, name: str, vocab, seconds: float) -> dict:
    it = mixture.make_dataset_iterator(data_config, name, vocab)
    t0 = time.perf_counter()
    next(it)  # warm-up: thread / worker start, first decode
    warm = time.perf_counter() - t0
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        n += next(it)["tokens"].shape[0]
    dt = time.perf_counter() - t0
    it.close()
    ds = data_config.datasets[name]
    return {
        "benchmark": "input_pipeline", "dataset": name, "kind": ds.kind, "source": data_config.source,
        "builder": ds.builder, "examples_per_s": round(n / dt,
                                                       1), "batches_per_s": round(n / dt / ds.batch_size,
                                                                                  2), "batch_size": ds.batch_size,
        "seq_len": ds.seq_len, "image_size": data_config.image_size, "max_images": ds.max_images, "frames": ds.frames,
        "threads": data_config.num_threads, "workers": data_config.get("num_workers", 0), "seconds": round(dt, 1),
        "warmup_s": round(warm, 1), "cpus": os.cpu_count(), "machine": platform.machine()
    }


def measure_mixture(data_config, vocab, names, seconds: float) -> dict:
    """Whole mixture steps/s in config.data.mode (all datasets' read threads / workers running at once)."""
    it = mixture.make_mixture_iterator(data_config, vocab=vocab, names=names)
    next(it)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        next(it)
        n += 1
    dt = time.perf_counter() - t0
    it.close()
    return {
        "benchmark": "input_pipeline", "dataset": "+".join(names), "mode": data_config.mode,
        "source": data_config.source, "steps_per_s": round(n / dt, 3), "seconds": round(dt, 1),
        "threads": data_config.num_threads, "workers": data_config.get("num_workers", 0), "cpus": os.cpu_count()
    }


def real_config(root: str, docs: int) -> 'ml_collections.ConfigDict':  # noqa: F821
    """config.data over generated real-format corpora in root (written and prepared on first use)."""
    from flamingo_jax.data import fake_corpora, prepare

    c = config_lib.default_data_config()
    c.source, c.data_dir, c.image_size = "tfds", os.path.join(root, "tfds"), 320
    corpora = {
        "mmc4": fake_corpora.write_mmc4_wds, "laion": fake_corpora.write_laion_wds,
        "video": fake_corpora.write_video_frames
    }
    for name, write in corpora.items():
        if not os.path.exists(os.path.join(root, name)):
            write(os.path.join(root, name), docs, image_size=320, **({"frames": 8} if name == "video" else {}))
    c.datasets.m3w.update(dict(builder="mmc4", builder_config="all", manual_dir=os.path.join(root, "mmc4")))
    c.datasets.align.update(
        dict(builder="image_text_pairs", builder_config="laion", manual_dir=os.path.join(root, "laion")))
    c.datasets.ltip.update(
        dict(builder="image_text_pairs", builder_config="laion", manual_dir=os.path.join(root, "laion")))
    c.datasets.vtp.update(
        dict(builder="video_text_frames", builder_config="", manual_dir=os.path.join(root, "video"), frames=8))
    for name in ("m3w", "align", "ltip", "vtp"):
        c.datasets[name].flip_prob = 0.5  # web data: the paper's augmentation
    prepare.prepare_all(c, ["m3w", "align", "vtp"], parallel=1)
    return c


def requirement(mfu: float) -> list[dict]:
    """Per-host examples/s for Flamingo-3B and 9B on a TPU v5e-256 slice at `mfu` (module docstring)."""
    import jax
    import jax.numpy as jnp

    from flamingo_jax.config_files import load_config
    from flamingo_jax.models.vision import build_vision, vision_num_tokens
    from flamingo_jax.tools.params import count_params

    chips, chips_per_host, peak = 256, 4, 197e12  # v5e: 197 TFLOP/s bf16 per chip; v5litepod hosts hold 4 chips
    hosts = chips // chips_per_host
    out = []
    for size in ("3b", "9b"):
        config = load_config(os.path.join(os.path.dirname(__file__), "..", "experiments", f"flamingo_{size}.py"))
        counts = count_params(config.model)
        n_lm = counts["lm"]
        n_x = counts["xattn"] + counts.get("new_tokens", 0)
        n_res = counts["resampler"]
        v = config.model.vision
        vision = build_vision(v)
        x = jnp.zeros((1, v.image_size, v.image_size, 3), jnp.float32)
        params = jax.eval_shape(lambda: vision.init(jax.random.key(0), x))
        cost = jax.jit(vision.apply).lower(params, x).cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost
        vision_flops = float(cost["flops"])
        s = vision_num_tokens(v)
        data = config.data
        tokens = sum(data.datasets[n].batch_size * data.datasets[n].seq_len for n in data.mixture)
        images = sum(data.datasets[n].batch_size * data.datasets[n].max_images * data.datasets[n].frames
                     for n in data.mixture)
        # Per token: frozen LM forward + backward to its inputs (2N + 2N), trainable xattn forward + both
        # backward passes (6N). Per image: frozen vision forward only; resampler (trainable) 6 N over its
        # 64 latents + S visual tokens (an upper bound: only K/V run on the visual tokens).
        per_token = 4 * n_lm + 6 * n_x
        per_image = vision_flops + 6 * n_res * (64 + s)
        step_flops = tokens * per_token + images * per_image
        steps_per_s = mfu * chips * peak / step_flops
        out.append({
            "benchmark": "input_pipeline_requirement", "model": f"flamingo_{size}", "mfu": mfu,
            "slice": f"v5e-{chips} ({hosts} hosts x {chips_per_host} chips, {peak / 1e12:.0f} TFLOP/s bf16 per chip)",
            "params": {"lm": n_lm, "xattn": n_x, "resampler": n_res,
                       "vision": counts["vision"]}, "vision_forward_flops_per_image": vision_flops,
            "visual_tokens_per_image": s, "tokens_per_step": tokens, "images_per_step": images,
            "flops_per_step": f"{tokens} x (4 x {n_lm} + 6 x {n_x}) + {images} x ({vision_flops:.3g} + 6 x {n_res} x "
            f"{64 + s}) = {step_flops:.4g}",
            "steps_per_s": f"{mfu} x {chips} x {peak:.3g} / {step_flops:.4g} = {steps_per_s:.3f}",
            "per_host_examples_per_s": {
                n: round(steps_per_s * data.datasets[n].batch_size / hosts, 2)
                for n in data.mixture
            }, "per_host_images_per_s": round(steps_per_s * images / hosts,
                                              1), "batch_sizes": {n: data.datasets[n].batch_size
                                                                  for n in data.mixture}
        })
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default="", help="experiment config file with .data (default: default_data_config)")
    p.add_argument("--source", default="", help="override config.data.source ('world' or 'tfds')")
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--threads", type=int, default=0, help="override config.data.num_threads")
    p.add_argument("--workers", default="", help="comma-separated grain worker counts to measure (0 = threads)")
    p.add_argument("--datasets", default="", help="comma-separated names (default: the mixture)")
    p.add_argument("--real", default="", help="directory for the generated real-format corpora (see above)")
    p.add_argument("--docs", type=int, default=400, help="--real: documents / pairs / clips per corpus")
    p.add_argument("--requirement", action="store_true", help="print the per-host requirement and exit")
    p.add_argument("--mfu", type=float, default=0.5)
    args = p.parse_args()
    if args.requirement:
        for line in requirement(args.mfu):
            print(json.dumps(line), flush=True)
        return
    if args.real:
        cfg = real_config(args.real, args.docs)
    elif args.config:
        from flamingo_jax.data.preview import load_config
        cfg = load_config(args.config)
    else:
        cfg = config_lib.default_data_config()
    if args.source:
        cfg.source = args.source
    if args.threads:
        cfg.num_threads = args.threads
    vocab = mixture.make_vocab(cfg)
    names = args.datasets.split(",") if args.datasets else list(cfg.mixture)
    for workers in ([int(w) for w in args.workers.split(",")] if args.workers else [cfg.get("num_workers", 0)]):
        cfg.num_workers = workers
        for name in names:
            print(json.dumps(measure(cfg, name, vocab, args.seconds)), flush=True)
        print(json.dumps(measure_mixture(cfg, vocab, names, args.seconds)), flush=True)


if __name__ == "__main__":
    main()
