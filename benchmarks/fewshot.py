"""Shared by benchmarks/generate.py and benchmarks/rank.py: the few-shot workload both sides run, our model
on it, the peer (../shared/peer/tiny_of.py, OpenFlamingo 2.0.1) as a subprocess, and alternating rounds.

The workload is tiny_of.py's dummy batch resized by --n-img / --seq-len: per row, `b % 3` text tokens, then
per image `<image>`, T // (n_img + 1) - 2 random tokens and `<EOC>`; the prompt is the first --prompt-len tokens
of each row, with all n_img images (one frame each) encoded. Values are random on both sides (the work does not
depend on them). The peer's per-call time is parsed from its output; its process start, model build and its
own forward/train passes are not timed.
"""

from __future__ import annotations

import os
import re
import statistics
import subprocess
import sys
import time
from typing import Callable

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.presets import BASE_VOCAB, PRESETS, preset_model_config  # noqa: E402

PEER = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared", "peer", "tiny_of.py")
PEER_DIR = os.path.expanduser("~/.cache/fj-peer")


def add_workload_args(ap, *, n_img: int | None, seq_len: int | None, prompt_len: int, rounds: int) -> None:
    """The command-line arguments every few-shot benchmark takes (generate.py, rank.py), with its defaults."""
    ap.add_argument("--presets", default="small")
    ap.add_argument("--n-img", type=int, default=n_img, help="images per prompt (default: the preset's)")
    ap.add_argument("--seq-len", type=int, default=seq_len, help="tokens per dummy sequence (default: the preset's)")
    ap.add_argument("--prompt-len", type=int, default=prompt_len)
    ap.add_argument("--rounds", type=int, default=rounds)
    ap.add_argument("--runs", type=int, default=3, help="timed calls per round on each side")
    ap.add_argument("--of-threads", type=int, default=0, help="torch threads for the peer (0 = its default)")


def workload(preset: str, a, *, left_pad_row0: bool) -> tuple:
    """(sizes, config, model, params, images [B, n, 1, S, S, 3], tokens [B, L], token mask [B, L], image mask [B, n])
    of one preset under the parsed add_workload_args `a`."""
    import jax

    p = sizes(preset, a.n_img, a.seq_len)
    cfg, model, params, images = our_model(preset, p)
    tokens, tmask = prompts(p, a.prompt_len, cfg.image_token_id, cfg.eoc_token_id, left_pad_row0=left_pad_row0)
    return p, cfg, model, params, images, tokens, tmask, jax.numpy.ones((p["B"], p["n_img"]), bool)


def sizes(preset: str, n_img: int | None, seq_len: int | None) -> dict:
    """The preset's sizes with the overrides (as tiny_of.py applies --n-img / --seq-len)."""
    p = dict(PRESETS[preset])
    if n_img is not None:
        p["n_img"] = n_img
    if seq_len is not None:
        p["T"] = seq_len
    return p


def prompts(p: dict, prompt_len: int, image_id: int, eoc_id: int, left_pad_row0: bool,
            seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """int32[B, prompt_len] prompts and their token mask (row 0's first 3 tokens masked as left padding when
    left_pad_row0, as tiny_of.py --generate does)."""
    rng = np.random.default_rng(seed)
    rows = []
    for b in range(p["B"]):
        seq = list(rng.integers(0, BASE_VOCAB, b % 3))
        for _ in range(p["n_img"]):
            seq += [image_id] + list(rng.integers(0, BASE_VOCAB, p["T"] // (p["n_img"] + 1) - 2)) + [eoc_id]
        seq = seq[:p["T"] - b]
        if len(seq) < prompt_len:
            raise ValueError(f"--prompt-len {prompt_len} is longer than row {b}'s {len(seq)} tokens")
        rows.append(seq[:prompt_len])
    tokens = np.asarray(rows, np.int32)
    mask = np.ones_like(tokens, bool)
    if left_pad_row0:
        mask[0, :3] = False
    return tokens, mask


def our_model(preset: str, p: dict):
    """(model config, module, params, images float32[B, n_img, 1, S, S, 3]) for the preset, params from the
    trainer's initialisation on one device."""
    import jax

    from flamingo_jax import models, sharding
    from flamingo_jax.train_state import init_params

    cfg = preset_model_config(preset)
    model = models.build(cfg)
    mesh = sharding.make_mesh(dict(data=1, fsdp=1, model=1), jax.devices()[:1])
    params, _, _ = init_params(model, cfg, mesh, jax.random.key(0))
    rng = np.random.default_rng(2)
    images = rng.random((p["B"], p["n_img"], 1, p["img"], p["img"], 3)).astype(np.float32)
    return cfg, model, params, images


def time_calls(fn: Callable[[], object], runs: int) -> dict:
    """fn once to compile, then `runs` timed calls: {'ms' (median), 'min_ms', 'first_call_s'}."""
    t0 = time.perf_counter()
    fn()
    first = time.perf_counter() - t0
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return dict(ms=1e3 * statistics.median(times), min_ms=1e3 * min(times), first_call_s=first, runs=runs)


def peer_available() -> bool:
    return all(
        os.path.exists(x)
        for x in (os.path.join(PEER_DIR, "venv", "bin", "python"), os.path.join(PEER_DIR, "of_root"), PEER))


def run_peer(preset: str, extra: list[str], pattern: str, threads: int = 0) -> float:
    """Runs tiny_of.py (preset, --lm llama, 1 training step) with `extra` and returns the ms that `pattern`'s
    group 1 matches in its output."""
    python = os.path.join(PEER_DIR, "venv", "bin", "python")
    of_root = open(os.path.join(PEER_DIR, "of_root")).read().strip()
    cmd = [python, PEER, "--of-root", of_root, "--config", preset, "--lm", "llama", "--steps", "1", *extra]
    if threads:
        cmd += ["--threads", str(threads)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    m = re.search(pattern, out.stdout)
    if not m:
        raise RuntimeError(f"no time in the peer output:\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")
    return float(m.group(1))


def alternate(rounds: int, ours: Callable[[], dict], peer: Callable[[], float] | None) -> dict:
    """`rounds` rounds of ours and the peer, alternating which goes first (the machine's speed drifts, so
    only ratios within a round compare): per-round times and ratios (peer / ours), medians, `speedup` = the
    median of the per-round ratios."""
    ours_ms, peer_ms, ratios = [], [], []
    for r in range(rounds):
        order = ("ours", "peer") if r % 2 == 0 else ("peer", "ours")
        got = {}
        for side in order:
            if side == "ours":
                got["ours"] = ours()["ms"]
            elif peer is not None:
                got["peer"] = peer()
        ours_ms.append(got["ours"])
        if peer is not None:
            peer_ms.append(got["peer"])
            ratios.append(got["peer"] / got["ours"])
        print(f"# round {r}: " + ", ".join(f"{k} {v:.1f} ms" for k, v in got.items()), file=sys.stderr, flush=True)
    out = dict(ours_ms=ours_ms, ours_median_ms=statistics.median(ours_ms))
    if peer is not None:
        out.update(openflamingo_ms=peer_ms, openflamingo_median_ms=statistics.median(peer_ms),
                   ratios=[round(x, 3) for x in ratios], speedup=statistics.median(ratios))
    return out
