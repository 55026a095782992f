"""Print training examples exactly as the model receives them, and save their images as a PNG grid.

    python -m flamingo_jax.data.preview --config experiments/tiny.py --out DIR --n 4

For each dataset of the config's mixture (config.data; default_data_config() when the config has no
`.data`), prints n examples (with --eval, also the eval sets' first query records): the decoded tokens with <image>/<EOC> markers, then every token with its
media index (phi) and whether its target counts in the loss, and writes DIR/samples.png with one row per
example (its images; for a video, the frames of its clip) and the caption text under it.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import ml_collections
import numpy as np
from absl import flags
from ml_collections import config_flags
from PIL import Image, ImageDraw

from flamingo_jax import config_files
from flamingo_jax.data import config as config_lib
from flamingo_jax.data import mixture


def data_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """An experiment config's config.data, or default_data_config() when it has none."""
    data = config.get("data") if hasattr(config, "get") else None
    if data is None:
        print("# the config has no .data; using flamingo_jax.data.config.default_data_config()")
        return config_lib.default_data_config()
    return data


def load_config(spec: str) -> ml_collections.ConfigDict:
    """The config.data of `spec` ('experiments/NAME.py[:arg]', flamingo_jax.config_files.load_config)."""
    return data_config(config_files.load_config(spec))


def token_table(vocab, tokens: np.ndarray, media_index: np.ndarray, loss_mask: np.ndarray) -> str:
    """'piece|phi|loss' per real token; loss '+' = the NEXT token (this position's target) counts."""
    cells = []
    for t, m, l in zip(tokens.tolist(), media_index.tolist(), loss_mask.tolist()):
        if t == vocab.pad_id and not l:
            continue
        piece = vocab.decode([t]) or repr(t)
        cells.append(f'{piece!s}|{m}|{"+" if l else "-"}')
    return " ".join(cells)


def describe(name: str, batch: dict[str, np.ndarray], vocab, n: int) -> list[str]:
    lines = []
    for i in range(min(n, batch["tokens"].shape[0])):
        b = {k: v[i] for k, v in batch.items()}
        lines.append(f'[{name} #{i}] images present: {int(b["image_mask"].sum())}/{b["image_mask"].shape[0]}, '
                     f'frames per image: {b["images"].shape[1]}, loss tokens: {int(b["loss_mask"].sum())}')
        lines.append("  text:   " + vocab.decode(b["tokens"]))
        lines.append("  tokens: " + token_table(vocab, b["tokens"], b["media_index"], b["loss_mask"]))
    return lines


def grid(rows: list[tuple[str, np.ndarray, str]], cell: int = 64, max_cols: int = 8) -> Image.Image:
    """rows: (label, float32[K, S, S, 3] in [0, 1], caption) -> one image, a row per example."""
    label_w, text_h, pad = 84, 14, 2
    width = label_w + max_cols * (cell + pad)
    height = len(rows) * (cell + text_h + pad)
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for r, (label, imgs, caption) in enumerate(rows):
        y = r * (cell + text_h + pad)
        draw.text((2, y + cell // 2 - 5), label, fill=(0, 0, 0))
        for k, img in enumerate(imgs[:max_cols]):
            tile = Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8)).resize((cell, cell), Image.NEAREST)
            canvas.paste(tile, (label_w + k * (cell + pad), y))
        max_chars = (width - 4) // 6
        draw.text((2, y + cell + 1), caption[:max_chars], fill=(40, 40, 120))
    return canvas


def media_row(b: dict[str, np.ndarray]) -> np.ndarray:
    """The frames to show: all present images (1 frame each), or the frames of a clip."""
    present = b["images"][b["image_mask"]]  # [K, F, S, S, 3]
    if len(present) == 0:
        return np.zeros((0, ) + b["images"].shape[2:])
    if present.shape[1] > 1:
        return present[0]
    return present[:, 0]


def eval_rows(data_config: ml_collections.ConfigDict, n: int) -> list[tuple[str, np.ndarray, str]]:
    """(label, frames, text) rows for the first n query records of every configured eval set."""
    from flamingo_jax.data import eval_sets

    rows = []
    for name in (data_config.get("eval_sets") or eval_sets.world_eval_sets()):
        src = eval_sets.eval_source(data_config, name, "query")
        for i in range(min(n, len(src))):
            rec = src[i]
            media = eval_sets.record_media(data_config, name, rec)[0]  # [F, S, S, 3]
            if "question" in rec:
                text = f'Question: {rec["question"]} Answer: {rec["answers"][0] if rec["answers"] else "?"}'
            else:
                text = f'Output: {rec["captions"][0]}' if "captions" in rec else rec.get("text", "")
            rows.append((f"{name[:11]} #{i}", media, text))
    return rows


def preview(data_config: ml_collections.ConfigDict, n: int, out_dir: str | None = None, cell: int = 64,
            with_eval: bool = False) -> tuple[str, Any]:
    it = mixture.make_mixture_iterator(data_config)
    vocab = it.vocab
    batches: dict[str, dict[str, np.ndarray]] = {name: {} for name in it.names}
    for name in it.names:  # enough examples of every dataset, whatever the mode
        chunks = []
        while sum(c["tokens"].shape[0] for c in chunks) < n:
            chunks.append(next(it.iterators[name]))
        batches[name] = {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}
    lines = [
        f"# vocabulary: base {vocab.base_size}, <image> {vocab.image_id}, <EOC> {vocab.eoc_id}; "
        f"mode {data_config.mode}; weights {it.weights}",
        "# per token: piece|media index (phi)|loss on its target (+/-)"
    ]
    rows = []
    for name, batch in batches.items():
        lines += describe(name, batch, vocab, n)
        for i in range(n):
            b = {k: v[i] for k, v in batch.items()}
            rows.append((f"{name} #{i}", media_row(b), vocab.decode(b["tokens"], markers=False)))
    if with_eval:
        extra = eval_rows(data_config, n)
        rows += extra
        lines += ["# eval sets (query split): " + " | ".join(f"{label}: {t}" for label, _, t in extra)]
    text = "\n".join(lines)
    image = grid(rows, cell=cell)
    if out_dir:
        os.makedirs(out_dir, exist_ok=True)
        image.save(os.path.join(out_dir, "samples.png"), optimize=True)
        with open(os.path.join(out_dir, "samples.txt"), "w") as f:
            f.write(text + "\n")
    return text, image


def define_flags(flag_values: flags.FlagValues, argv: list[str]) -> None:
    """The command line of the module docstring; `--config.data.x=v` overrides any field of the config."""
    config_flags.DEFINE_config_file("config", None, "experiment config file (path[:arg])", flag_values=flag_values,
                                    sys_argv=argv)
    flags.mark_flag_as_required("config", flag_values=flag_values)
    define = dict(flag_values=flag_values)
    flags.DEFINE_string("out", None, "output directory for samples.png / samples.txt", **define)
    flags.DEFINE_integer("n", 4, "examples per dataset", **define)
    flags.DEFINE_integer("cell", 64, "pixels per image tile in the PNG", **define)
    flags.DEFINE_bool("eval", False, "also show the eval sets (query split)", **define)


def main(argv: list[str] | None = None) -> None:
    """argv without the program name (default sys.argv[1:])."""
    f, _ = config_files.parse_flags("python -m flamingo_jax.data.preview", __doc__, argv, define_flags)
    text, _ = preview(data_config(f.config), f.n, f.out, f.cell, with_eval=f.eval)
    print(text)
    if f.out:
        print(f'# wrote {os.path.join(f.out, "samples.png")}', file=sys.stderr)


if __name__ == "__main__":
    main()
