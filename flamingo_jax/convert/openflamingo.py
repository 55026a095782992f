"""OpenFlamingo 2.0.1 checkpoints -> our full param tree in the `openflamingo` compatibility setting.

Inputs: `checkpoint.pt` (the trainable weights: perceiver, gated cross-attention layers, and the full input
embedding table resized for the added tokens), the LM's HuggingFace directory, and the open_clip vision
tower's state dict. Output: params {vision, resampler, lm, xattn, new_tokens} and
`openflamingo_config(vision, lm, n)` (flamingo_spec.md section 6).

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
    return {"scale": w.take(name + ".weight", (d,)), "bias": w.take(name + ".bias", (d,))}


def _attn(w: Weights, p: str, d_q: int, d_kv: int) -> dict:
    inner = HEADS * HEAD_DIM
    kv = w.take(p + "to_kv.weight", (2 * inner, d_kv))
    return {"query": {"kernel": linear(w.take(p + "to_q.weight", (inner, d_q))).reshape(d_q, HEADS, HEAD_DIM)},
            "key": {"kernel": linear(kv[:inner]).reshape(d_kv, HEADS, HEAD_DIM)},
            "value": {"kernel": linear(kv[inner:]).reshape(d_kv, HEADS, HEAD_DIM)},
            "out": {"kernel": linear(w.take(p + "to_out.weight", (d_q, inner))).reshape(HEADS, HEAD_DIM, d_q)}}


def _ffw(w: Weights, p: str, d: int, mult: int = 4) -> tuple[dict, dict]:
    """(norm params, FeedForward params) from OpenFlamingo's Sequential(LN, Linear, GELU, Linear)."""
    return _ln(w, p + "0", d), {"wi": {"kernel": linear(w.take(p + "1.weight", (mult * d, d)))},
                                "wo": {"kernel": linear(w.take(p + "3.weight", (d, mult * d)))}}


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
        out[f"layers_{i}"] = {"media_norm": _ln(w, p + "0.norm_media", dv),
                              "latent_norm": _ln(w, p + "0.norm_latents", dv),
                              "attn": _attn(w, p + "0.", dv, dv), "ffw_norm": norm, "ffw": ffw}
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
        gate = lambda n: sub.take(n, (1,)).reshape(())  # noqa: E731
        out.append({"xattn": {"query_norm": _ln(sub, "attn.norm", d), "attn": _attn(sub, "attn.", d, dv)},
                    "attn_gate": gate("attn_gate"), "ffw_norm": norm, "ffw": ffw, "ffw_gate": gate("ff_gate")})
        sub.finish()
        for v in names.values():
            w.take(v)
    return out


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
    ignored = {f"checkpoint:{k}": r for k, r in ck.finish().items()}
    ignored.update({f"lm:{k}": r for k, r in lm_ignored.items()})
    ignored.update({f"vision:{k}": r for k, r in vision_ignored.items()})

    if scan_layers:
        lm_cfg.scan_layers = True
        lm_params = lm_hf.stack_layers(lm_params, lm_cfg.num_layers)
    import jax
    xattn_tree = ({"layers": jax.tree.map(lambda *xs: np.stack(xs), *xattn)} if scan_layers
                  else {f"layers_{j}": p for j, p in enumerate(xattn)})
    config = openflamingo_config(vcfg, lm_cfg, every, add_pad_token=num_new_tokens == 3)
    params = {"vision": vision_params, "resampler": resampler, "lm": lm_params, "xattn": xattn_tree,
              "new_tokens": new_tokens}
    check_params(params, "flamingo", config)
    source = dict(format="openflamingo", checkpoint=os.path.abspath(checkpoint), lm=os.path.abspath(lm),
                  vision=os.path.abspath(vision), lm_model_type=hf.get("model_type"))
    return Converted("flamingo", params, config, source=source, ignored=ignored, notes=notes)
