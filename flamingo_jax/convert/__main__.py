"""CLI: python -m flamingo_jax.convert hf|openflamingo ... --out DIR (see flamingo_jax/convert/__init__.py)."""

from __future__ import annotations

import argparse
import sys

from flamingo_jax.convert.hf import convert_hf, convert_open_clip
from flamingo_jax.convert.openflamingo import convert_openflamingo
from flamingo_jax.convert.store import save_converted
from flamingo_jax.convert.weights import ConversionError


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m flamingo_jax.convert",
                                 description="Convert pretrained weights to flamingo_jax params (Orbax) + config.")
    sub = ap.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--out", required=True, help="output directory (params/ + config.json)")
    common.add_argument("--dtype", default=None, choices=["float32", "bfloat16"],
                        help="store params in this dtype (default float32)")
    common.add_argument("--scan-layers", action="store_true", help="stack LM layers for scan_layers=True models")
    common.add_argument("--force", action="store_true", help="overwrite an existing converted directory")
    hf = sub.add_parser("hf", parents=[common], help="a HuggingFace LM or CLIP vision checkpoint directory")
    hf.add_argument("--src", required=True, help="directory with config.json and *.safetensors / *.bin")
    hf.add_argument("--ln-post", action="store_true", help="CLIP vision: apply post_layernorm to the tokens")
    oc = sub.add_parser("open_clip", parents=[common], help="an open_clip vision tower state dict file")
    oc.add_argument("--src", required=True, help="open_clip checkpoint (.bin/.pt/.safetensors), `visual.*` or bare")
    oc.add_argument("--act", default="quick_gelu", help="quick_gelu (OpenAI CLIP) or gelu")
    oc.add_argument("--ln-post", action="store_true", help="tokens pass ln_post (open_clip >= 2.24)")
    oc.add_argument("--heads", type=int, default=None, help="default width // 64")
    of = sub.add_parser("openflamingo", parents=[common], help="an OpenFlamingo checkpoint.pt + its LM + vision")
    of.add_argument("--checkpoint", required=True, help="OpenFlamingo checkpoint.pt")
    of.add_argument("--lm", required=True, help="the LM's HuggingFace directory")
    of.add_argument("--vision", required=True, help="the open_clip vision tower's state dict (.bin/.pt/.safetensors)")
    of.add_argument("--num-new-tokens", type=int, default=3, choices=[2, 3],
                    help="3 if OpenFlamingo added <PAD> (the tokenizer had none), else 2")
    of.add_argument("--cross-attn-every-n-layers", type=int, default=None, help="check against the checkpoint")
    of.add_argument("--vision-act", default="quick_gelu", help="quick_gelu (OpenAI CLIP) or gelu")
    of.add_argument("--vision-ln-post", action="store_true",
                    help="tokens pass ln_post (open_clip >= 2.24 behaviour; OpenFlamingo was trained without)")
    of.add_argument("--vision-heads", type=int, default=None, help="default width // 64")
    return ap


def main(argv: list[str] | None = None) -> int:
    a = parser().parse_args(argv)
    try:
        if a.command == "hf":
            result = convert_hf(a.src, scan_layers=a.scan_layers, ln_post=a.ln_post)
        elif a.command == "open_clip":
            result = convert_open_clip(a.src, act=a.act, ln_post=a.ln_post, heads=a.heads)
        else:
            result = convert_openflamingo(a.checkpoint, a.lm, a.vision, num_new_tokens=a.num_new_tokens,
                                          cross_attn_every_n_layers=a.cross_attn_every_n_layers,
                                          vision_act=a.vision_act, vision_ln_post=a.vision_ln_post,
                                          vision_heads=a.vision_heads, scan_layers=a.scan_layers)
        out = save_converted(a.out, result, dtype=a.dtype, force=a.force)
    except (ConversionError, FileExistsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {result.kind} params to {out} ({len(result.ignored)} checkpoint tensors ignored, "
          "reasons in config.json)")
    for note in result.notes:
        print(f"note: {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
