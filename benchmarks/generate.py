"""Few-shot generation speed, ours beside OpenFlamingo in one run (alternating rounds).

    nice -n 5 .venv/bin/python benchmarks/generate.py --presets small --n-img 17 --seq-len 600 --prompt-len 560 \
        --new-tokens 8 --beams 3 [--rounds 3] [--runs 3] [--no-openflamingo]

The workload (benchmarks/fewshot.py): B prompts of --prompt-len tokens with their --n-img images (row 0's first
3 tokens masked as left padding), beam search with --beams beams for exactly --new-tokens tokens (no stop
token, so both sides do the same work). Our time covers the vision encoding and the generation (medians of
--runs calls after a compiling one); OpenFlamingo's is tiny_of.py --generate with the same values (its
generate(), median of --runs calls, a fresh process per round). Rounds alternate which side goes first; the
JSON line per preset has both sides' per-round times, the per-round ratios OpenFlamingo / ours and `speedup`,
their median. Set the peer up once with `bash ../shared/peer/setup.sh`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import jax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import fewshot  # noqa: E402
from benchmarks.presets import BASE_VOCAB  # noqa: E402
from flamingo_jax.evaluation import decoding  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    fewshot.add_workload_args(ap, n_img=None, seq_len=None, prompt_len=20, rounds=3)
    ap.add_argument("--new-tokens", type=int, default=8)
    ap.add_argument("--beams", type=int, default=3)
    ap.add_argument("--no-openflamingo", action="store_true", help="time ours only")
    a = ap.parse_args()
    for name in a.presets.split(","):
        p, cfg, model, params, images, tokens, tmask, image_mask = fewshot.workload(name, a, left_pad_row0=True)
        dec = decoding.Decoder(model, pad_id=BASE_VOCAB + 2)
        gen = decoding.GenerationConfig(max_new_tokens=a.new_tokens, num_beams=a.beams, stop_ids=(),
                                        banned_ids=(cfg.image_token_id, ))
        tokens, tmask, images = map(jax.device_put, (tokens, tmask, images))

        def once():
            visual = dec.encode(params, images)
            return jax.block_until_ready(dec.generate(params, tokens, tmask, visual, image_mask, gen))

        out = once()
        assert out["tokens"].shape == (p["B"], a.beams, a.new_tokens)
        peer = None
        if not a.no_openflamingo:
            if not fewshot.peer_available():
                sys.exit("the peer is not set up: bash ../shared/peer/setup.sh (or pass --no-openflamingo)")
            extra = [
                "--generate", "--n-img",
                str(p["n_img"]), "--seq-len",
                str(p["T"]), "--prompt-len",
                str(a.prompt_len), "--new-tokens",
                str(a.new_tokens), "--beams",
                str(a.beams), "--gen-repeats",
                str(a.runs)
            ]
            peer = lambda: fewshot.run_peer(
                name,
                extra,
                r"generate: out shape .*? time=([0-9.]+) ms",  # noqa: E731
                a.of_threads)
        res = fewshot.alternate(a.rounds, lambda: fewshot.time_calls(once, a.runs), peer)
        print(
            json.dumps(
                dict(preset=name, device=jax.devices()[0].platform, batch=p["B"], n_img=p["n_img"], seq_len=p["T"],
                     prompt_len=a.prompt_len, new_tokens=a.new_tokens, beams=a.beams, runs=a.runs, rounds=a.rounds,
                     **res)), flush=True)


if __name__ == "__main__":
    main()
