"""Command line inference: a caption (or answer) from a trained checkpoint for images given as files.

    python -m flamingo_jax.infer --checkpoint WORKDIR --images a.png b.png --prompt "<image>Output:" \
        [--num_beams 3] [--max_new_tokens 20] [--min_new_tokens 0] [--step N] [--data_dir DIR] [--json]

WORKDIR is a flamingo_jax.train workdir (its newest intact checkpoint and the config it was trained with);
one `<image>` in the prompt per image, in order. Prints the generated text (with --json, one JSON object with
the text, token ids and score). --data_dir overrides where the run's vocabulary is cached (config.data.data_dir).
"""

from __future__ import annotations

import argparse
import json
import sys


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True, help="training workdir (or its checkpoints/ folder)")
    ap.add_argument("--images", nargs="*", default=[], help="image files, one per <image> in the prompt")
    ap.add_argument("--prompt", required=True, help='e.g. "<image>Output:"')
    ap.add_argument("--num_beams", type=int, default=3, help="beam width (1 = greedy)")
    ap.add_argument("--max_new_tokens", type=int, default=20)
    ap.add_argument("--min_new_tokens", type=int, default=0, help="no <EOC>/EOS before this many tokens")
    ap.add_argument("--length_penalty", type=float, default=0.0)
    ap.add_argument("--step", type=int, default=None, help="checkpoint step (default: the newest intact one)")
    ap.add_argument("--data_dir", default=None, help="where the vocabulary is cached (default: the run's)")
    ap.add_argument("--json", action="store_true", help="print {'text', 'tokens', 'score'} as JSON")
    a = ap.parse_args(argv)

    import os

    from flamingo_jax import inference

    path = os.path.abspath(a.checkpoint)
    if os.path.basename(path) == "checkpoints":
        path = os.path.dirname(path)
    try:
        params, config = inference.load(path, a.step)
    except Exception as e:  # noqa: BLE001 - one line, not a traceback: a wrong path is the usual cause
        print(f"error: cannot load a checkpoint from {path}: {e}", file=sys.stderr)
        return 1
    if a.data_dir:
        config.data.data_dir = a.data_dir
    try:
        out = inference.generate(params, config, a.images, a.prompt, num_beams=a.num_beams,
                                 max_new_tokens=a.max_new_tokens, min_new_tokens=a.min_new_tokens,
                                 length_penalty=a.length_penalty, return_details=True)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(json.dumps(out) if a.json else out["text"], flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
