"""Close-ended ranking speed: many class names scored after a few-shot prompt, ours beside OpenFlamingo's way.

    nice -n 5 .venv/bin/python benchmarks/rank.py --presets small --n-img 5 --seq-len 200 --prompt-len 160 \
        --classes 1000 --class-len 3 --openflamingo [--rounds 2] [--runs 3] [--chunk 128]

The workload (benchmarks/fewshot.py): B prompts of --prompt-len tokens with their --n-img images, then the
log-likelihood of each of --classes random class names of --class-len tokens after every prompt. Ours:
Decoder.rank (the prompt prefilled once, the classes scored in chunks of --chunk on its cached keys/values,
which are never copied per class), the vision encoding included, median of --runs calls after a compiling one.
OpenFlamingo: tiny_of.py --rank-classes with the same values, i.e. its evaluation's
get_rank_classifications(use_cache=True): the prompt once, then one forward per class for the whole batch on
the cached keys/values (a fresh process per round, one timed pass: 1000 classes take seconds). Rounds
alternate which side goes first; the JSON line has per-round times, ratios OpenFlamingo / ours and `speedup`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import fewshot  # noqa: E402
from benchmarks.presets import BASE_VOCAB  # noqa: E402
from flamingo_jax.evaluation import decoding  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    fewshot.add_workload_args(ap, n_img=5, seq_len=200, prompt_len=160, rounds=2)
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--class-len", type=int, default=3)
    ap.add_argument("--chunk", type=int, default=128, help="classes per batched forward (ours)")
    ap.add_argument("--openflamingo", action="store_true", help="also run the peer, alternating rounds")
    a = ap.parse_args()
    for name in a.presets.split(","):
        p, cfg, model, params, images, tokens, tmask, image_mask = fewshot.workload(name, a, left_pad_row0=False)
        classes = np.random.default_rng(0).integers(0, BASE_VOCAB, (a.classes, a.class_len)).astype(np.int32)
        cmask = np.ones_like(classes, bool)
        dec = decoding.Decoder(model, pad_id=BASE_VOCAB + 2, rank_chunk=a.chunk)
        tokens, tmask, images, classes, cmask = map(jax.device_put, (tokens, tmask, images, classes, cmask))

        def once():
            visual = dec.encode(params, images)
            return jax.block_until_ready(dec.rank(params, tokens, tmask, visual, image_mask, classes, cmask))

        assert once().shape == (p["B"], a.classes)
        peer = None
        if a.openflamingo:
            if not fewshot.peer_available():
                sys.exit("the peer is not set up: bash ../shared/peer/setup.sh")
            extra = [
                "--n-img",
                str(p["n_img"]), "--seq-len",
                str(p["T"]), "--prompt-len",
                str(a.prompt_len), "--rank-classes",
                str(a.classes), "--class-len",
                str(a.class_len)
            ]
            peer = lambda: fewshot.run_peer(name, extra, r"rank: .*? time=([0-9.]+) ms", a.of_threads)  # noqa: E731
        res = fewshot.alternate(a.rounds, lambda: fewshot.time_calls(once, a.runs), peer)
        print(
            json.dumps(
                dict(preset=name, device=jax.devices()[0].platform, batch=p["B"], n_img=p["n_img"], seq_len=p["T"],
                     prompt_len=a.prompt_len, classes=a.classes, class_len=a.class_len, chunk=a.chunk, runs=a.runs,
                     rounds=a.rounds, **res)), flush=True)


if __name__ == "__main__":
    main()
