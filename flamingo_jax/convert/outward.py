"""Weights out: our params -> a HuggingFace LM directory, or an OpenFlamingo checkpoint of the trainable part.

Each export is the exact inverse of the import converter (lm_hf.convert_lm, openflamingo.resampler_params /
xattn_params), derived from it rather than written a second time: the import is run once on integer
"id tensors" (every element of every checkpoint tensor numbered), so each of our param elements names the
checkpoint element it came from, and the export scatters our values back to those places
(`invert`). The import only transposes, reshapes, slices and stacks, so this is exact; to make sure, every
export runs the import on what it wrote and checks that it gives back the params bit for bit.

    lm_to_hf(lm_params, lm_config, template_dir, out_dir)          # config.json + model.safetensors
    flamingo_to_openflamingo(params, config, lm_family, path)        # checkpoint.pt (OpenFlamingo 2.0.1 names)

Memory: the id tensors are int64, 8 bytes per exported parameter, on top of the params.
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Any, Callable, Mapping

import jax
import numpy as np

from flamingo_jax.convert.weights import ConversionError, Weights, read_config
from flamingo_jax.files import write_json

HF_FAMILIES = ("llama", "gpt2", "opt", "mpt", "neox")


def invert(forward: Callable[[Weights], Any],
           shapes: Mapping[str, tuple[int, ...]]) -> Callable[[Any], dict[str, np.ndarray]]:
    """`forward(Weights)` -> a params tree that rearranges the checkpoint's elements; returns
    `backward(params)` -> {name: array} with every element put back where forward took it from. Names
    forward does not read are left out; a name read only in part is an error."""
    offsets, total = {}, 0
    for name, shape in shapes.items():
        offsets[name] = total
        total += int(np.prod(shape, dtype=np.int64))
    ids = {
        n: np.arange(o, o + int(np.prod(shapes[n], dtype=np.int64)), dtype=np.int64).reshape(shapes[n])
        for n, o in offsets.items()
    }
    id_tree = forward(Weights(ids, "ids"))
    id_leaves = jax.tree.leaves(id_tree)
    if any(np.asarray(x).dtype != np.int64 for x in id_leaves):
        raise ConversionError("the import converter made values of its own (not taken from the checkpoint): "
                              "it cannot be inverted")

    def backward(params: Any) -> dict[str, np.ndarray]:
        leaves = jax.tree.leaves(params)
        if len(leaves) != len(id_leaves):
            raise ConversionError(f"the params have {len(leaves)} arrays, the converted layout {len(id_leaves)}")
        dtype = np.result_type(*[np.asarray(x).dtype for x in leaves])
        flat = np.zeros(total, dtype)
        filled = np.zeros(total, bool)
        for idx, value in zip(id_leaves, leaves):
            idx, value = np.asarray(idx), np.asarray(value)
            if idx.shape != value.shape:
                raise ConversionError(f"a param of shape {value.shape} where the layout has {idx.shape}")
            flat[idx.ravel()] = value.ravel()
            filled[idx.ravel()] = True
        out = {}
        for name, shape in shapes.items():
            o, size = offsets[name], int(np.prod(shape, dtype=np.int64))
            got = filled[o:o + size]
            if got.all():
                out[name] = flat[o:o + size].reshape(shape)
            elif got.any():
                raise ConversionError(f"{name}: only {int(got.sum())} of its {size} elements come from the params")
        return out

    return backward


def _check_round_trip(forward: Callable[[Weights], Any], tensors: dict[str, np.ndarray], params: Any) -> None:
    again = forward(Weights(tensors, "export"))
    for a, b in zip(jax.tree.leaves(again), jax.tree.leaves(params)):
        if not np.array_equal(np.asarray(a, np.float32), np.asarray(b, np.float32)):
            raise ConversionError("the export does not convert back to the same params (an import step that is "
                                  "not a rearrangement): nothing was written")


# ----------------------------------------------------------------------------------- HuggingFace LM


def template_shapes(template_dir: str) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape of a HuggingFace checkpoint directory, read from the safetensors headers (no
    tensor is loaded), or from the PyTorch files."""
    from safetensors import safe_open

    from flamingo_jax.convert.weights import SAFETENSORS_NAMES, read_dir

    for name in SAFETENSORS_NAMES:
        path = os.path.join(template_dir, name)
        if not os.path.isfile(path):
            continue
        files = [path]
        if name.endswith(".index.json"):
            with open(path) as f:
                files = [os.path.join(template_dir, s) for s in sorted(set(json.load(f)["weight_map"].values()))]
        shapes = {}
        for file in files:
            with safe_open(file, framework="numpy") as f:
                for k in f.keys():
                    shapes[k] = tuple(f.get_slice(k).get_shape())
        return shapes
    return {k: tuple(v.shape) for k, v in read_dir(template_dir).items()}


def lm_to_hf(lm_params: dict, lm_config: Any, template_dir: str, out_dir: str, *, force: bool = False) -> str:
    """Writes out_dir/config.json (the template's, vocab_size set to our table's rows) + model.safetensors
    (in the params' dtype; bfloat16 stays bfloat16), and the template's tokenizer files. template_dir: the
    HuggingFace directory the LM was converted from (its architecture and tensor names)."""
    from safetensors.numpy import save_file

    from flamingo_jax.convert import lm_hf

    if lm_config.family not in HF_FAMILIES:
        raise ConversionError(f"the LM is of family {lm_config.family!r}, which has no HuggingFace architecture; "
                              f"only LMs of {HF_FAMILIES} (converted from a HuggingFace checkpoint) export to one")
    if lm_config.get("scan_layers"):
        lm_params = unstack_layers(lm_params, lm_config.num_layers)
    out_dir = os.path.abspath(out_dir)
    if os.path.exists(os.path.join(out_dir, "config.json")) and not force:
        raise FileExistsError(f"{out_dir} already holds a checkpoint: choose another directory or pass --force")
    hf = read_config(template_dir)
    rows = int(np.asarray(lm_params["embed"]["embedding"]).shape[0])
    hf = dict(hf, vocab_size=rows)
    shapes = template_shapes(template_dir)
    layout = lm_hf.LAYOUTS[lm_config.family]
    root = next((r for r in layout.roots if r + layout.embed in shapes), None)
    if root is None:
        raise ConversionError(f"{template_dir}: no {layout.embed} (not a {lm_config.family} checkpoint)")
    for name in (root + layout.embed, layout.head):  # the vocabulary may have been truncated on import
        if name in shapes:
            shapes[name] = (rows, ) + shapes[name][1:]
    if lm_config.tie_embeddings:
        shapes.pop(layout.head, None)  # tied: HF ties it on load

    def forward(w: Weights) -> dict:
        c = lm_hf.prepare_config(hf, w)
        return lm_hf.params_from_hf(w, c)

    # Shape-only stand-ins (zero-stride views: no memory) for the facts prepare_config reads from tensors.
    c = lm_hf.prepare_config(hf, Weights({k: np.broadcast_to(np.int8(0), v) for k, v in shapes.items()}, template_dir))
    for field in ("d_model", "num_layers", "num_heads", "vocab_size", "tie_embeddings"):
        if c[field] != lm_config[field]:
            raise ConversionError(f"{template_dir} describes another LM: its {field} is {c[field]}, the run's "
                                  f"{lm_config[field]}")
    tensors = invert(forward, shapes)(lm_params)
    _check_round_trip(forward, tensors, lm_params)
    os.makedirs(out_dir, exist_ok=True)
    save_file(tensors, os.path.join(out_dir, "model.safetensors"), metadata={"format": "pt"})
    for name in os.listdir(template_dir):  # the tokenizer travels with the LM
        if "token" in name or name in ("special_tokens_map.json", "generation_config.json", "vocab.json", "merges.txt"):
            shutil.copy2(os.path.join(template_dir, name), os.path.join(out_dir, name))
    write_json(os.path.join(out_dir, "config.json"), hf)
    return out_dir


def unstack_layers(params: dict, n: int) -> dict:
    """`layers` stacked on axis 0 (scan_layers=True) -> layers_0..layers_{n-1}."""
    out = {k: v for k, v in params.items() if k != "layers"}
    for i in range(n):
        out[f"layers_{i}"] = jax.tree.map(lambda x: np.asarray(x)[i], params["layers"])
    return out


# -------------------------------------------------------------------------------------- OpenFlamingo


def _openflamingo_shapes(d: int, dv: int, num_layers: int, every: int, rows: int, embed: str,
                         layers_path: str) -> dict[str, tuple[int, ...]]:
    """The trainable tensors OpenFlamingo 2.0.1 saves (filter_state_dict_to_trainable): perceiver.*, the
    gated cross-attention blocks under their decoder-layer alias, and the resized input embedding."""
    from flamingo_jax.convert.openflamingo import HEAD_DIM, HEADS

    inner = HEADS * HEAD_DIM
    s: dict[str, tuple[int, ...]] = {
        "perceiver.latents": (64, dv), "perceiver.norm.weight": (dv, ), "perceiver.norm.bias": (dv, )
    }
    for i in range(6):
        p = f"perceiver.layers.{i}."
        s.update({
            p + "0.norm_media.weight": (dv, ), p + "0.norm_media.bias": (dv, ), p + "0.norm_latents.weight": (dv, ),
            p + "0.norm_latents.bias": (dv, ), p + "0.to_q.weight": (inner, dv), p + "0.to_kv.weight": (2 * inner, dv),
            p + "0.to_out.weight": (dv, inner), p + "1.0.weight": (dv, ), p + "1.0.bias": (dv, ),
            p + "1.1.weight": (4 * dv, dv), p + "1.3.weight": (dv, 4 * dv)
        })
    for i in range(every - 1, num_layers, every):
        p = f"lang_encoder.{layers_path}.{i}.gated_cross_attn_layer."
        s.update({
            p + "attn.norm.weight": (d, ), p + "attn.norm.bias": (d, ), p + "attn.to_q.weight": (inner, d),
            p + "attn.to_kv.weight": (2 * inner, dv), p + "attn.to_out.weight": (d, inner), p + "attn_gate": (1, ),
            p + "ff.0.weight": (d, ), p + "ff.0.bias": (d, ), p + "ff.1.weight": (4 * d, d),
            p + "ff.3.weight": (d, 4 * d), p + "ff_gate": (1, )
        })
    s["lang_encoder." + embed] = (rows, d)
    return s


def flamingo_to_openflamingo(params: dict, config: Any, path: str, *, force: bool = False) -> str:
    """Writes the trainable weights (perceiver, gated cross-attention, input embedding with the added tokens)
    as an OpenFlamingo 2.0.1 checkpoint: a torch state dict (path ending .pt), the one its training writes
    and `model.load_state_dict(torch.load(path), strict=False)` loads. The model must be in the
    `openflamingo` compatibility setting (a model converted with `flamingo_jax.convert openflamingo`)."""
    from flamingo_jax.convert import lm_hf
    from flamingo_jax.convert.openflamingo import resampler_params, xattn_params, _xattn_names

    lm_c = config.lm
    if lm_c.family not in HF_FAMILIES or not config.get("num_new_tokens"):
        raise ConversionError(f"only models in OpenFlamingo's layout export to it (an LM of {HF_FAMILIES} and "
                              f"added tokens: a model converted with `flamingo_jax.convert openflamingo`); this "
                              f"one has a {lm_c.family!r} LM")
    if os.path.exists(path) and not force:
        raise FileExistsError(f"{path} exists: choose another path or pass --force")
    layout = lm_hf.LAYOUTS[lm_c.family]
    every, n_layers = int(config.xattn.every), int(lm_c.num_layers)
    lm = unstack_layers(params["lm"], n_layers) if lm_c.get("scan_layers") else params["lm"]
    xattn = params["xattn"]
    if "layers" in xattn:  # scan_layers: stacked
        count = jax.tree.leaves(xattn["layers"])[0].shape[0]
        xattn = {f"layers_{j}": jax.tree.map(lambda x: np.asarray(x)[j], xattn["layers"]) for j in range(count)}
    d, dv = int(lm_c.d_model), int(np.asarray(params["resampler"]["latents"]).shape[-1])
    table = np.concatenate([np.asarray(lm["embed"]["embedding"]), np.asarray(params["new_tokens"]["embedding"])])
    embed = layout.roots[0] + layout.embed
    ours = {"resampler": params["resampler"], "xattn": xattn, "table": table}
    # A head whose name contains "embed" (GPT-NeoX's embed_out) is saved by OpenFlamingo's filter.
    head = layout.head if (not lm_c.tie_embeddings and "embed" in layout.head) else None
    shapes = _openflamingo_shapes(d, dv, n_layers, every, table.shape[0], embed, layout.roots[0] + layout.layers)
    if head:
        shapes["lang_encoder." + head] = (table.shape[0], d)
        ours["head"] = np.concatenate(
            [np.asarray(lm["head"]["kernel"]),
             np.asarray(params["new_tokens"]["unembedding"])], axis=1)

    def forward(w: Weights) -> dict:
        layers = _xattn_names(w)
        out = {
            "resampler": resampler_params(w, dv),
            "xattn": {f"layers_{j}": p
                      for j, p in enumerate(xattn_params(w, layers, d, dv))}, "table": w.take("lang_encoder." + embed)
        }
        if head:
            out["head"] = np.ascontiguousarray(w.take("lang_encoder." + head).T)
        return out

    tensors = invert(forward, shapes)(ours)
    _check_round_trip(forward, tensors, ours)
    import torch

    state = {k: torch.from_numpy(np.asarray(v, np.float32).copy()) for k, v in tensors.items()}
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    torch.save(state, path + ".tmp")
    os.replace(path + ".tmp", path)
    return os.path.abspath(path)
