"""OpenFlamingo 2.0.1 checkpoints -> our full param tree in the `openflamingo` compatibility setting.

Inputs: `checkpoint.pt` (the trainable weights: perceiver, gated cross-attention layers, and the full input
embedding table resized for the added tokens), the LM's HuggingFace directory, and the open_clip vision
tower's state dict. Output: params {vision, resampler, lm, xattn, new_tokens} and
`openflamingo_config(vision, lm, n)` (flamingo_jax.models: OpenFlamingo's architecture).

Checkpoint names (OpenFlamingo saves `model.state_dict()` minus frozen named_parameters, so aliases of
shared modules survive): `perceiver.*`; `lang_encoder.gated_cross_attn_layers.{i}.*` and its alias
`lang_encoder.<decoder layers>.{i}.gated_cross_attn_layer.*` (must agree); the embedding
`lang_encoder.<embed>.weight` [V + n, D]; frozen copies (`vision_encoder.*`, `old_decoder_blocks.*`,
`*.decoder_layer.*`, other LM weights) are ignored with a reason, as the LM and vision files are the source
of the frozen weights. Anything else is an error.

Vocabulary: OpenFlamingo resizes the LM's table to len(tokenizer), so V = rows - n where n = 3 added
tokens (`<|endofchunk|>`, `<image>`, `<PAD>`), or 2 when the tokenizer had a pad token. Base rows come
from the checkpoint's table (what OpenFlamingo runs with); the LM's own table is only compared.
For untied heads (LLaMA, GPT-NeoX) the output rows of the added tokens are random in OpenFlamingo and not
saved unless the checkpoint holds the resized head (GPT-NeoX's `embed_out` is saved, its name contains
"embed"); otherwise they are set to zero and a note says so.
"""

from __future__ import annotations

import os
import re

import numpy as np

from flamingo_jax.convert import lm_hf, vision_hf
from flamingo_jax.convert.check import check_params
from flamingo_jax.convert.store import Converted
from flamingo_jax.convert.weights import ConversionError, Weights, linear, read_config, read_dir, read_file
from flamingo_jax.models import openflamingo_config

HEADS, HEAD_DIM = 8, 64  # OpenFlamingo's perceiver and cross-attention (not configurable in 2.0.1)
XATTN = re.compile(r"lang_encoder\.gated_cross_attn_layers\.(\d+)\.(.+)")
XATTN_ALIAS = re.compile(r"lang_encoder\.(.+)\.(\d+)\.gated_cross_attn_layer\.(.+)")
FROZEN_ALIASES = r"lang_encoder\.(old_decoder_blocks\.\d+\..+|.+\.\d+\.decoder_layer\..+)"
FROZEN_REASON = "frozen weight, converted from the {} file instead"


def _ln(w: Weights, name: str, d: int) -> dict:
    return {"scale": w.take(name + ".weight", (d, )), "bias": w.take(name + ".bias", (d, ))}


def _attn(w: Weights, p: str, d_q: int, d_kv: int) -> dict:
    inner = HEADS * HEAD_DIM
    kv = w.take(p + "to_kv.weight", (2 * inner, d_kv))
    return {
        "query": {"kernel": linear(w.take(p + "to_q.weight", (inner, d_q))).reshape(d_q, HEADS, HEAD_DIM)},
        "key": {"kernel": linear(kv[:inner]).reshape(d_kv, HEADS, HEAD_DIM)},
        "value": {"kernel": linear(kv[inner:]).reshape(d_kv, HEADS, HEAD_DIM)},
        "out": {"kernel": linear(w.take(p + "to_out.weight", (d_q, inner))).reshape(HEADS, HEAD_DIM, d_q)}
    }


def _ffw(w: Weights, p: str, d: int, mult: int = 4) -> tuple[dict, dict]:
    """(norm params, FeedForward params) from OpenFlamingo's Sequential(LN, Linear, GELU, Linear)."""
    return _ln(w, p + "0", d), {
        "wi": {"kernel": linear(w.take(p + "1.weight", (mult * d, d)))},
        "wo": {"kernel": linear(w.take(p + "3.weight", (d, mult * d)))}
    }


def resampler_params(w: Weights, dv: int) -> dict:
    depth = 0
    while f"perceiver.layers.{depth}.0.to_q.weight" in w:
        depth += 1
    if depth != 6:
        raise ConversionError(f"{w.source}: perceiver has {depth} layers; OpenFlamingo's has 6")
    out = {"latents": w.take("perceiver.latents", (64, dv)), "final_norm": _ln(w, "perceiver.norm", dv)}
    for i in range(depth):
        p = f"perceiver.layers.{i}."
        norm, ffw = _ffw(w, p + "1.", dv)
        out[f"layers_{i}"] = {
            "media_norm": _ln(w, p + "0.norm_media", dv), "latent_norm": _ln(w, p + "0.norm_latents", dv),
            "attn": _attn(w, p + "0.", dv, dv), "ffw_norm": norm, "ffw": ffw
        }
    return out


def _xattn_names(w: Weights) -> dict[int, dict[str, str]]:
    """LM layer index -> {suffix: checkpoint name}, merging the alias names (checked equal)."""
    primary: dict[int, dict[str, str]] = {}
    alias: dict[int, dict[str, str]] = {}
    for name in w.names():
        if m := XATTN.fullmatch(name):
            primary.setdefault(int(m[1]), {})[m[2]] = name
        elif m := XATTN_ALIAS.fullmatch(name):
            alias.setdefault(int(m[2]), {})[m[3]] = name
    out = {i: dict(alias.get(i, {}), **primary.get(i, {})) for i in set(primary) | set(alias)}
    for i, names in alias.items():
        for suffix, name in names.items():
            main = primary.get(i, {}).get(suffix)
            if main is not None:
                if not np.array_equal(w.tensors[main], w.tensors[name]):
                    raise ConversionError(f"{w.source}: {name} differs from its alias {main}")
                w.take(name)
    return out


def xattn_params(w: Weights, layers: dict[int, dict[str, str]], d: int, dv: int) -> list[dict]:
    out = []
    for i in sorted(layers):
        names = layers[i]
        sub = Weights({k: w.tensors[v] for k, v in names.items()}, f"{w.source} (cross-attention before LM layer {i})")
        norm, ffw = _ffw(sub, "ff.", d)
        gate = lambda n: sub.take(n, (1, )).reshape(())  # noqa: E731
        out.append({
            "xattn": {"query_norm": _ln(sub, "attn.norm", d), "attn": _attn(sub, "attn.", d, dv)},
            "attn_gate": gate("attn_gate"), "ffw_norm": norm, "ffw": ffw, "ffw_gate": gate("ff_gate")
        })
        sub.finish()
        for v in names.values():
            w.take(v)
    return out


# A frozen copy matches its source when it differs by no more than bfloat16 rounding (8 bits of mantissa:
# relative 2^-8 of the element, bounded here by the tensor's largest magnitude, with margin).
FROZEN_RTOL = 8e-3


def _frozen_source(name: str, lm: Weights, vision: Weights, layers_path: str) -> tuple[str, str] | None:
    """(flag, name in that file) of the --lm / --vision tensor a frozen copy in the checkpoint duplicates."""
    if name.startswith("vision_encoder."):
        rest = name[len("vision_encoder."):]
        for cand in (rest, rest[len("visual."):] if rest.startswith("visual.") else "visual." + rest):
            if cand in vision:
                return "--vision", cand
        return None
    if m := re.fullmatch(r"lang_encoder\.old_decoder_blocks\.(\d+)\.(.+)", name):
        rest = f"{layers_path}.{m[1]}.{m[2]}"
    elif m := re.fullmatch(r"lang_encoder\.(.+)\.(\d+)\.decoder_layer\.(.+)", name):
        rest = f"{m[1]}.{m[2]}.{m[3]}"
    elif name.startswith("lang_encoder."):
        rest = name[len("lang_encoder."):]
    else:
        return None
    return ("--lm", rest) if rest in lm else None


def check_frozen_copies(ck: Weights, lm: Weights, vision: Weights, layers_path: str, *, tied_head: str | None,
                        table_name: str) -> None:
    """A full OpenFlamingo state_dict also holds the frozen LM and vision weights it ran with. They are not
    converted (the --lm and --vision files are), so they must equal those files: a checkpoint trained on
    another LM would otherwise convert into a model whose logits differ from OpenFlamingo's. Raises
    ConversionError naming the tensors that differ (and by how much)."""
    bad = []
    for name in sorted(ck.ignored):
        if name == tied_head:  # the tied output head is the (resized, trained) input embedding itself
            src, other = "the checkpoint's " + table_name, ck.tensors[table_name]
        else:
            found = _frozen_source(name, lm, vision, layers_path)
            if found is None:
                continue
            flag, other_name = found
            src, other = f"{flag} {other_name}", (lm if flag == "--lm" else vision).tensors[other_name]
        a, b = np.asarray(ck.tensors[name], np.float32), np.asarray(other, np.float32)
        if a.ndim and a.shape[1:] == b.shape[1:] and a.shape[0] != b.shape[0]:
            # a vocabulary table resized by OpenFlamingo (resize_token_embeddings keeps the first rows)
            rows = min(a.shape[0], b.shape[0])
            a, b = a[:rows], b[:rows]
        if a.shape != b.shape:
            bad.append(f"{name} has shape {a.shape}, {src} {b.shape}")
            continue
        diff, scale = float(np.max(np.abs(a - b), initial=0.0)), float(np.max(np.abs(b), initial=0.0))
        if diff > FROZEN_RTOL * scale + 1e-6:
            bad.append(f"{name} differs from {src} by up to {diff:.3g} (largest |value| {scale:.3g})")
    if bad:
        shown = "\n  ".join(bad[:8]) + (f"\n  ... and {len(bad) - 8} more" if len(bad) > 8 else "")
        raise ConversionError(f"{ck.source}: {len(bad)} frozen weight(s) saved in the checkpoint contradict the "
                              f"files given (OpenFlamingo ran with the checkpoint's; the conversion would use "
                              f"the files'):\n  {shown}\npass the --lm / --vision the checkpoint was trained with")


def _tokenizer_size(lm_dir: str) -> tuple[int, bool] | None:
    """(len(tokenizer), has a pad token) of the tokenizer saved in the LM directory, as OpenFlamingo's factory
    sees it before adding its tokens; None without transformers or tokenizer files."""
    try:
        from transformers import AutoTokenizer
    except ImportError:
        return None
    try:
        tok = AutoTokenizer.from_pretrained(lm_dir, local_files_only=True)
    except Exception:  # noqa: BLE001 - no tokenizer files in the directory (weights only)
        return None
    return len(tok), tok.pad_token is not None


def check_added_tokens(table: np.ndarray, lm_table: np.ndarray, n: int, lm_dir: str, source: str) -> None:
    """--num-new-tokens must be the number OpenFlamingo added (3, or 2 when the tokenizer had a pad token):
    a wrong count shifts every added id (<image>, <|endofchunk|>) by one. Decided from the tokenizer in the
    LM directory when there is one; otherwise from the rows: base rows start as the LM's (OpenFlamingo's
    resize keeps them; training moves them little) while the added ones start from a fresh init. Raises
    ConversionError naming the count the checkpoint implies."""
    rows = table.shape[0]
    tok = _tokenizer_size(lm_dir)
    if tok is not None:
        size, has_pad = tok
        expected = 2 if has_pad else 3
        if rows != size + expected:
            raise ConversionError(f"{source}: the embedding has {rows} rows but the tokenizer in {lm_dir} has "
                                  f"{size} tokens{' and a pad token' if has_pad else ''}, so OpenFlamingo added "
                                  f"{expected} ({rows - size} by the table): this checkpoint was not trained "
                                  f"with this tokenizer")
        if n != expected:
            raise ConversionError(f"--num-new-tokens {n} contradicts the checkpoint: its {rows} embedding rows are "
                                  f"the tokenizer's {size} + {expected} added tokens; pass --num-new-tokens "
                                  f"{expected}")
        return
    v = rows - n
    common = min(rows, lm_table.shape[0])
    if common <= 3:
        return
    a, b = table[:common].astype(np.float32), lm_table[:common].astype(np.float32)
    rel = np.linalg.norm(a - b, axis=1) / np.maximum(np.linalg.norm(b, axis=1), 1e-12)
    typical = float(np.median(rel[:max(common - 3, 1)]))
    if typical > 0.05:  # base rows were trained far from the LM's: the rows cannot tell the count
        return
    if n == 2 and v - 1 < common and rel[v - 1] > 0.5:
        raise ConversionError(f"--num-new-tokens 2 contradicts the checkpoint: its row {v - 1}, which would be a "
                              f"base token, is not the LM's (relative difference {rel[v - 1]:.2f}, typical base "
                              f"row {typical:.2g}): it is an added token; pass --num-new-tokens 3")
    if n == 3 and v < common and rel[v] < 0.05:
        raise ConversionError(f"--num-new-tokens 3 contradicts the checkpoint: its row {v}, which would be the "
                              f"first added token, equals the LM's (relative difference {rel[v]:.2g}): it is a "
                              f"base token; pass --num-new-tokens 2")


def infer_every(indices: list[int], num_layers: int) -> int:
    """OpenFlamingo's cross_attn_every_n_layers from the LM layers that have a cross-attention block."""
    if not indices:
        raise ConversionError("the checkpoint has no gated cross-attention layers")
    n = indices[0] + 1
    if indices != list(range(n - 1, num_layers, n)):
        raise ConversionError(f"cross-attention layers {indices} are not OpenFlamingo's every-n placement "
                              f"for {num_layers} LM layers")
    return n


def convert_openflamingo(checkpoint: str, lm: str, vision: str, *, num_new_tokens: int = 3,
                         cross_attn_every_n_layers: int | None = None, vision_act: str = "quick_gelu",
                         vision_ln_post: bool = False, vision_heads: int | None = None,
                         scan_layers: bool = False) -> Converted:
    """Converts an OpenFlamingo checkpoint (see the module docstring).

    num_new_tokens: 3 (`<|endofchunk|>`, `<image>`, `<PAD>`) or 2 if the tokenizer had a pad token.
    vision_*: the open_clip tower's activation, whether its tokens pass ln_post (open_clip >= 2.24), heads.
    """
    if num_new_tokens not in (2, 3):
        raise ConversionError(f"num_new_tokens must be 2 or 3, got {num_new_tokens}")
    notes: list[str] = []
    # Frozen towers from their own files.
    hf = read_config(lm)
    lw = Weights(read_dir(lm), lm)
    lm_params, lm_cfg = lm_hf.convert_lm(hf, lw)
    lm_ignored = lw.finish()
    lm_names = set(lw.tensors)
    layout = lm_hf.LAYOUTS[lm_cfg.family]
    vw = Weights(read_file(vision), vision)
    vcfg = vision_hf.open_clip_config(vw, act=vision_act, ln_post=vision_ln_post, heads=vision_heads)
    vision_params = vision_hf.open_clip_params(vw, vcfg)
    vision_ignored = vw.finish()

    ck = Weights(read_file(checkpoint), checkpoint)
    d, dv = lm_cfg.d_model, vcfg.width
    resampler = resampler_params(ck, dv)
    layers = _xattn_names(ck)
    every = infer_every(sorted(layers), lm_cfg.num_layers)
    if cross_attn_every_n_layers not in (None, every):
        raise ConversionError(f"the checkpoint has cross-attention every {every} layers, "
                              f"not {cross_attn_every_n_layers}")
    xattn = xattn_params(ck, layers, d, dv)

    # Embedding table: base rows + the added tokens' rows.
    embed_name = "lang_encoder." + layout.roots[0] + layout.embed
    table = ck.take(embed_name)
    rows = table.shape[0]
    v = rows - num_new_tokens
    if table.shape[1] != d or not 0 < v <= lm_cfg.vocab_size:
        raise ConversionError(f"{checkpoint}: {embed_name} has shape {table.shape}; expected [V + {num_new_tokens}, "
                              f"{d}] with V <= the LM's vocab_size {lm_cfg.vocab_size}")
    lm_table = lm_params["embed"]["embedding"]
    check_added_tokens(table, lm_table, num_new_tokens, lm, checkpoint)
    diff = float(np.max(np.abs(lm_table[:v] - table[:v])))
    if diff:
        notes.append(f"the checkpoint's base embedding rows differ from the LM's (max |diff| {diff:.3g}); "
                     "using the checkpoint's, as OpenFlamingo does")
    if v < lm_cfg.vocab_size:
        notes.append(f"vocabulary truncated from {lm_cfg.vocab_size} to the tokenizer's {v} rows, as OpenFlamingo's "
                     "resize_token_embeddings does")
    lm_cfg.vocab_size = v
    lm_params["embed"]["embedding"] = table[:v]
    new_tokens = {"embedding": table[v:]}
    if not lm_cfg.tie_embeddings:
        head_name = "lang_encoder." + layout.head
        if head_name in ck:
            out = ck.take(head_name, (rows, d))
            lm_params["head"]["kernel"] = linear(out[:v])
            new_tokens["unembedding"] = linear(out[v:])
        else:
            lm_params["head"]["kernel"] = lm_params["head"]["kernel"][:, :v]
            new_tokens["unembedding"] = np.zeros((d, num_new_tokens), np.float32)
            notes.append("untied LM head: OpenFlamingo's output rows for the added tokens were random and are not "
                         "in the checkpoint; set to zero (their logits are 0)")

    # Frozen duplicates inside the checkpoint.
    ck.ignore(r"vision_encoder\..*", FROZEN_REASON.format("--vision"))
    ck.ignore(FROZEN_ALIASES, FROZEN_REASON.format("--lm"))
    frozen = {"lang_encoder." + n for n in lm_names} | {"lang_encoder." + layout.head}
    ck.ignore_names(frozen, FROZEN_REASON.format("--lm"))
    check_frozen_copies(ck, lw, vw,
                        lm_hf.find_root(lw, layout) + layout.layers,
                        tied_head="lang_encoder." + layout.head if lm_cfg.tie_embeddings else None,
                        table_name=embed_name)
    ignored = {f"checkpoint:{k}": r for k, r in ck.finish().items()}
    ignored.update({f"lm:{k}": r for k, r in lm_ignored.items()})
    ignored.update({f"vision:{k}": r for k, r in vision_ignored.items()})

    if scan_layers:
        lm_cfg.scan_layers = True
        lm_params = lm_hf.stack_layers(lm_params, lm_cfg.num_layers)
    import jax
    xattn_tree = ({"layers": jax.tree.map(lambda *xs: np.stack(xs), *xattn)}
                  if scan_layers else {f"layers_{j}": p
                                       for j, p in enumerate(xattn)})
    config = openflamingo_config(vcfg, lm_cfg, every, add_pad_token=num_new_tokens == 3)
    params = {
        "vision": vision_params, "resampler": resampler, "lm": lm_params, "xattn": xattn_tree, "new_tokens": new_tokens
    }
    check_params(params, "flamingo", config)
    source = dict(format="openflamingo", checkpoint=os.path.abspath(checkpoint), lm=os.path.abspath(lm),
                  vision=os.path.abspath(vision), lm_model_type=hf.get("model_type"))
    return Converted("flamingo", params, config, source=source, ignored=ignored, notes=notes)
