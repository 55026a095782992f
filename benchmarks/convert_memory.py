"""Peak host memory of converting a sharded bfloat16 HuggingFace LM, against the checkpoint's size.

    python benchmarks/convert_memory.py --workdir DIR [--layers 8 --d_model 1024 --vocab 32000] [--dtype bfloat16]

Writes a random LLaMA-shaped checkpoint with transformers (bfloat16, 100 MB safetensors shards) once, then
runs `python -m flamingo_jax.convert hf` on it in a fresh process and reads that process's peak resident set
(ru_maxrss of the child). A second child only imports what the conversion imports (jax, orbax, the
converter), so the conversion's own share is the difference. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys

IMPORTS_ONLY = ("import orbax.checkpoint, jax, safetensors, ml_dtypes; "
                "from flamingo_jax.convert import hf, store; print('ok')")


def write_checkpoint(path: str, layers: int, d_model: int, vocab: int) -> int:
    import torch
    import transformers

    if not os.path.isfile(os.path.join(path, "model.safetensors.index.json")):
        config = transformers.LlamaConfig(vocab_size=vocab, hidden_size=d_model, intermediate_size=4 * d_model,
                                          num_hidden_layers=layers, num_attention_heads=d_model // 64,
                                          max_position_embeddings=256, torch_dtype="bfloat16")
        torch.manual_seed(0)
        model = transformers.LlamaForCausalLM(config).to(torch.bfloat16)
        model.save_pretrained(path, max_shard_size="100MB")
        del model
    return sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path) if f.endswith(".safetensors"))


def peak_rss_of(cmd: list[str]) -> tuple[int, str]:
    """(peak resident bytes of the child, its stderr tail). Linux reports ru_maxrss in KiB."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(f"{cmd} failed: {r.stderr[-2000:]}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if after <= before:  # RUSAGE_CHILDREN is the max over children: run each measurement in its own process
        raise SystemExit("run each measurement in a fresh benchmark process (ru_maxrss of an earlier child is larger)")
    return after * 1024, r.stderr[-300:]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", required=True)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--d_model", type=int, default=1024)
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"], help="converted params' dtype")
    p.add_argument("--what", default="convert", choices=["convert", "imports"],
                   help="imports: only the conversion's imports (the baseline), in this fresh process's child")
    a = p.parse_args()
    src = os.path.join(a.workdir, "hf")
    size = write_checkpoint(src, a.layers, a.d_model, a.vocab)
    if a.what == "imports":
        peak, _ = peak_rss_of([sys.executable, "-c", IMPORTS_ONLY])
    else:
        out = os.path.join(a.workdir, f"converted_{a.dtype}")
        peak, _ = peak_rss_of([
            sys.executable, "-m", "flamingo_jax.convert", "hf", "--src", src, "--out", out, "--dtype", a.dtype,
            "--force"
        ])
    print(
        json.dumps({
            "what": a.what, "checkpoint_bytes": size, "dtype": a.dtype, "peak_rss_bytes": peak,
            "peak_over_checkpoint": round(peak / size, 3)
        }))


if __name__ == "__main__":
    main()
