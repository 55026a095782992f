"""Generation speed: beam search (beam 3, 8 new tokens) on the benchmark presets, ours vs OpenFlamingo.

    PYTHONPATH=. .venv/bin/python benchmarks/generate.py --presets tiny,small [--runs 10] [--openflamingo]

The workload is the one ../shared/peer/tiny_of.py times with `--generate`: the preset's batch B of prompts made
of the first 20 tokens of its dummy interleaved sequences (row 0 with its first 3 tokens masked as left
padding), all n_img images per row encoded, then beam search with 3 beams for exactly 8 new tokens (we pass
no stop token so every call does the same work). Our time covers the vision encoding and the generation
(one call each, after a warm-up that compiles); tokens/s = B * 8 / time. --openflamingo also runs the peer
script (OpenFlamingo 2.0.1 generate(), PyTorch CPU) right after ours, `--of-repeats` times, and reports its
median. Prints one JSON object per preset.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.presets import BASE_VOCAB, PRESETS, preset_model_config  # noqa: E402
from flamingo_jax import models, sharding  # noqa: E402
from flamingo_jax.evaluation import decoding  # noqa: E402
from flamingo_jax.train import init_params  # noqa: E402

PROMPT_LEN, NEW_TOKENS, BEAMS = 20, 8, 3
PEER = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared", "peer")


def dummy_prompts(p: dict, image_id: int, eoc_id: int, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """tiny_of.py's dummy_batch rows (text, then <image> text <eoc> per image), cut to 20 tokens."""
    rng = np.random.default_rng(seed)
    rows = []
    for b in range(p["B"]):
        seq = list(rng.integers(0, BASE_VOCAB, b % 3))
        for _ in range(p["n_img"]):
            seq += [image_id] + list(rng.integers(0, BASE_VOCAB, p["T"] // (p["n_img"] + 1) - 2)) + [eoc_id]
        rows.append(seq[:PROMPT_LEN])
    tokens = np.asarray(rows, np.int32)
    mask = np.ones_like(tokens, bool)
    mask[0, :3] = False  # row 0 "left-padded", as the peer script
    return tokens, mask


def bench_ours(name: str, runs: int) -> dict:
    p = PRESETS[name]
    cfg = preset_model_config(name)
    model = models.build(cfg)
    mesh = sharding.make_mesh(dict(data=1, fsdp=1, model=1), jax.devices()[:1])
    params, _, _ = init_params(model, cfg, mesh, jax.random.key(0))
    tokens, tmask = dummy_prompts(p, cfg.image_token_id, cfg.eoc_token_id)
    rng = np.random.default_rng(2)
    images = jnp.asarray(rng.random((p["B"], p["n_img"], 1, p["img"], p["img"], 3)), jnp.float32)
    image_mask = jnp.ones((p["B"], p["n_img"]), bool)
    dec = decoding.Decoder(model, pad_id=BASE_VOCAB + 2)
    gen = decoding.GenerationConfig(max_new_tokens=NEW_TOKENS, num_beams=BEAMS, stop_ids=(),
                                    banned_ids=(cfg.image_token_id,))

    def once():
        visual = dec.encode(params, images)
        out = dec.generate(params, tokens, tmask, visual, image_mask, gen)
        return jax.block_until_ready(out)

    t0 = time.perf_counter()
    out = once()
    compile_s = time.perf_counter() - t0
    assert out["tokens"].shape == (p["B"], BEAMS, NEW_TOKENS)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        once()
        times.append(time.perf_counter() - t0)
    ms = 1e3 * statistics.median(times)
    return dict(ms=ms, min_ms=1e3 * min(times), tokens_per_s=p["B"] * NEW_TOKENS / (ms / 1e3),
                first_call_s=compile_s, runs=runs)


def bench_openflamingo(name: str, repeats: int, threads: int = 0) -> dict | None:
    """The peer script's generate() time (ms), median over `repeats` fresh processes."""
    venv = os.path.expanduser("~/.cache/fj-peer/venv/bin/python")
    root_file = os.path.expanduser("~/.cache/fj-peer/of_root")
    script = os.path.join(PEER, "tiny_of.py")
    if not (os.path.exists(venv) and os.path.exists(root_file) and os.path.exists(script)):
        return None
    of_root = open(root_file).read().strip()
    times = []
    for _ in range(repeats):
        out = subprocess.run([venv, script, "--of-root", of_root, "--config", name, "--lm", "llama", "--steps", "1",
                              "--generate"] + (["--threads", str(threads)] if threads else []), capture_output=True, text=True, timeout=900)
        m = re.search(r"generate: out shape \S+ \S+\) time=([0-9.]+) ms", out.stdout)
        if not m:
            raise RuntimeError(f"no generate time in the peer output:\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")
        times.append(float(m.group(1)))
    ms = statistics.median(times)
    return dict(ms=ms, all_ms=times, tokens_per_s=PRESETS[name]["B"] * NEW_TOKENS / (ms / 1e3))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", default="tiny,small")
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--openflamingo", action="store_true", help="also time the peer OpenFlamingo generate()")
    ap.add_argument("--of-repeats", type=int, default=3)
    ap.add_argument("--of-threads", type=int, default=0, help="torch threads for the peer (0 = its default); "
                    "pair with XLA_FLAGS='--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1'")
    a = ap.parse_args()
    for name in a.presets.split(","):
        res = dict(preset=name, device=str(jax.devices()[0].platform), batch=PRESETS[name]["B"],
                   prompt_len=PROMPT_LEN, new_tokens=NEW_TOKENS, beams=BEAMS, ours=bench_ours(name, a.runs))
        if a.openflamingo:
            of = bench_openflamingo(name, a.of_repeats, a.of_threads)
            res["openflamingo"] = of
            if of:
                res["speedup"] = of["ms"] / res["ours"]["ms"]
        print(json.dumps(res), flush=True)


if __name__ == "__main__":
    main()
