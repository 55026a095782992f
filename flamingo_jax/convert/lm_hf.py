"""HuggingFace decoder LMs -> `DecoderLM` params and `lm_config`.

Families (config.json `model_type` -> our family): llama, mistral -> llama; gpt2 -> gpt2; opt -> opt;
mpt -> mpt (HF's native MPT and MosaicML's MPT-7B remote code share weight names); gpt_neox -> neox.

Weight layouts: torch Linear weights are [out, in] and become kernels [in, out]; GPT-2's Conv1D weights
are already [in, out]; attention kernels are [D, H, Dh] (q/k/v) and [H, Dh, D] (out). Fused projections:
GPT-2 `c_attn` and MPT `Wqkv` are [q | k | v] along the output axis; GPT-NeoX `query_key_value` is
interleaved per head ([H, 3, Dh] along the output axis).

Per-layer params are `layers_{i}`; with `scan_layers=True` one `layers` tree stacked on axis 0.
Buffers that HF recomputes (rotary inv_freq, causal-mask buffers) are ignored with a reason; every other
unused name is an error.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import ml_collections
import numpy as np

from flamingo_jax.models.lm import lm_config
from flamingo_jax.convert.weights import ConversionError, Weights, linear

HF_ACTIVATIONS = {
    "gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu_fast": "gelu_tanh", "relu": "relu",
    "silu": "silu", "swish": "silu", "quick_gelu": "quick_gelu"
}

BUFFER_REASON = "buffer recomputed by the model (not a learnt weight)"


@dataclasses.dataclass(frozen=True)
class LMLayout:
    """Where a family keeps its tensors (names after the root prefix, e.g. `model.`)."""

    family: str
    roots: tuple[str, ...]  # candidate prefixes of the transformer body, first = CausalLM naming
    embed: str  # input embedding, relative to the root
    head: str | None  # untied output head (absolute name), None if always tied
    layers: str  # the list of decoder blocks, relative to the root
    buffers: tuple[str, ...] = ()  # regexes (relative to the root) of buffers to ignore


LAYOUTS = {
    "llama": LMLayout("llama", ("model.", ""), "embed_tokens.weight", "lm_head.weight", "layers",
                      (r"layers\.\d+\.self_attn\.rotary_emb\.inv_freq", )),
    "gpt2": LMLayout("gpt2", ("transformer.", ""), "wte.weight", "lm_head.weight", "h",
                     (r"h\.\d+\.attn\.(bias|masked_bias)", )),
    "opt": LMLayout("opt", ("model.decoder.", "decoder.", ""), "embed_tokens.weight", "lm_head.weight", "layers"),
    "mpt": LMLayout("mpt", ("transformer.", ""), "wte.weight", "lm_head.weight", "blocks"),
    "neox": LMLayout("neox", ("gpt_neox.", ""), "embed_in.weight", "embed_out.weight", "layers",
                     (r"layers\.\d+\.attention\.(bias|masked_bias|rotary_emb\.inv_freq)", )),
}

MODEL_TYPES = {"llama": "llama", "mistral": "llama", "gpt2": "gpt2", "opt": "opt", "mpt": "mpt", "gpt_neox": "neox"}


def family_of(hf_config: dict) -> str:
    mt = hf_config.get("model_type")
    if mt in MODEL_TYPES:
        return MODEL_TYPES[mt]
    if mt == "mosaic_gpt":
        raise ConversionError("model_type 'mosaic_gpt' (MosaicML's MPT-1B remote code, OpenFlamingo-3B's LM) is "
                              "not supported: it uses query/key LayerNorm (attn_qk_ln), which DecoderLM lacks")
    raise ConversionError(f"unsupported LM model_type {mt!r}: supported are {sorted(MODEL_TYPES)}")


def _act(name: str) -> str:
    if name not in HF_ACTIVATIONS:
        raise ConversionError(f"unsupported activation {name!r}: supported are {sorted(HF_ACTIVATIONS)}")
    return HF_ACTIVATIONS[name]


def _require(cond: bool, what: str) -> None:
    if not cond:
        raise ConversionError(f"unsupported checkpoint option: {what}")


# ------------------------------------------------------------------------------------------ configs


def config_from_hf(hf: dict) -> ml_collections.ConfigDict:
    """Our lm_config from a HuggingFace config.json dict (architecture fields only)."""
    fam = family_of(hf)
    if fam == "llama":
        _require(not hf.get("rope_scaling"), f"rope_scaling={hf.get('rope_scaling')}")
        _require(not hf.get("attention_bias", False), "attention_bias=True (biases on attention only)")
        return lm_config("llama", vocab_size=hf["vocab_size"], d_model=hf["hidden_size"],
                         num_layers=hf["num_hidden_layers"], num_heads=hf["num_attention_heads"],
                         num_kv_heads=hf.get("num_key_value_heads") or hf["num_attention_heads"],
                         head_dim=hf["hidden_size"] // hf["num_attention_heads"], d_ff=hf["intermediate_size"],
                         act=_act(hf.get("hidden_act", "silu")), norm_eps=hf.get("rms_norm_eps", 1e-6),
                         rope_theta=float(hf.get("rope_theta",
                                                 10000.0)), max_len=hf.get("max_position_embeddings", 2048),
                         tie_embeddings=bool(hf.get("tie_word_embeddings", False)))
    if fam == "gpt2":
        _require(hf.get("scale_attn_weights", True), "scale_attn_weights=False")
        _require(not hf.get("scale_attn_by_inverse_layer_idx", False), "scale_attn_by_inverse_layer_idx=True")
        d = hf["n_embd"]
        return lm_config("gpt2", vocab_size=hf["vocab_size"], d_model=d, num_layers=hf["n_layer"],
                         num_heads=hf["n_head"], d_ff=hf.get("n_inner") or 4 * d,
                         act=_act(hf.get("activation_function",
                                         "gelu_new")), norm_eps=hf.get("layer_norm_epsilon", 1e-5),
                         max_len=hf.get("n_positions", 1024), tie_embeddings=bool(hf.get("tie_word_embeddings", True)))
    if fam == "opt":
        d = hf["hidden_size"]
        _require(hf.get("do_layer_norm_before", True), "do_layer_norm_before=False (post-LN OPT-350m)")
        _require(hf.get("word_embed_proj_dim", d) == d, "word_embed_proj_dim != hidden_size (OPT-350m)")
        _require(hf.get("layer_norm_elementwise_affine", True), "layer_norm_elementwise_affine=False")
        _require(not hf.get("_remove_final_layer_norm", False), "_remove_final_layer_norm=True")
        return lm_config("opt", vocab_size=hf["vocab_size"], d_model=d, num_layers=hf["num_hidden_layers"],
                         num_heads=hf["num_attention_heads"], d_ff=hf["ffn_dim"],
                         act=_act(hf.get("activation_function",
                                         "relu")), norm_eps=1e-5, use_bias=bool(hf.get("enable_bias", True)),
                         max_len=hf.get("max_position_embeddings",
                                        2048), tie_embeddings=bool(hf.get("tie_word_embeddings", True)))
    if fam == "mpt":
        attn = hf.get("attn_config") or {}
        _require(attn.get("alibi", True), "attn_config.alibi=False (learned positions)")
        _require(attn.get("alibi_bias_max", 8) == 8, f"alibi_bias_max={attn.get('alibi_bias_max')}")
        _require(attn.get("softmax_scale") is None, f"softmax_scale={attn.get('softmax_scale')}")
        _require(attn.get("clip_qkv") is None, f"clip_qkv={attn.get('clip_qkv')}")
        _require(not attn.get("qk_ln", False), "attn_config.qk_ln=True")
        _require(
            attn.get("attn_type", "multihead_attention") == "multihead_attention", f"attn_type={attn.get('attn_type')}")
        _require(hf.get("logit_scale") is None, f"logit_scale={hf.get('logit_scale')}")
        ffn = hf.get("ffn_config") or {}
        _require(ffn.get("ffn_type", "mptmlp") == "mptmlp", f"ffn_config.ffn_type={ffn.get('ffn_type')}")
        d = hf["d_model"]
        return lm_config("mpt", vocab_size=hf["vocab_size"], d_model=d, num_layers=hf["n_layers"],
                         num_heads=hf["n_heads"], d_ff=int(hf.get("expansion_ratio", 4) * d),
                         norm_eps=hf.get("layer_norm_epsilon", 1e-5), use_bias=not hf.get("no_bias", True),
                         max_len=hf.get("max_seq_len", 2048), tie_embeddings=True)
    # neox
    _require(not hf.get("rope_scaling"), f"rope_scaling={hf.get('rope_scaling')}")
    _require(hf.get("attention_bias", True), "attention_bias=False")
    return lm_config("neox", vocab_size=hf["vocab_size"], d_model=hf["hidden_size"], num_layers=hf["num_hidden_layers"],
                     num_heads=hf["num_attention_heads"], d_ff=hf["intermediate_size"],
                     act=_act(hf.get("hidden_act", "gelu")), norm_eps=hf.get("layer_norm_eps", 1e-5),
                     rope_theta=float(hf.get("rotary_emb_base", 10000)), rotary_pct=float(hf.get("rotary_pct", 0.25)),
                     parallel_residual=bool(hf.get("use_parallel_residual",
                                                   True)), max_len=hf.get("max_position_embeddings", 2048),
                     tie_embeddings=bool(hf.get("tie_word_embeddings", False)))


# ------------------------------------------------------------------------------------------ params


def find_root(w: Weights, layout: LMLayout) -> str:
    """The prefix under which this checkpoint keeps the transformer body (CausalLM or bare model)."""
    for root in layout.roots:
        if root + layout.embed in w:
            return root
    raise ConversionError(f"{w.source}: no input embedding found (looked for "
                          f"{[r + layout.embed for r in layout.roots]})")


def _norm(w: Weights, name: str, c: ml_collections.ConfigDict) -> dict:
    p = {"scale": w.take(name + ".weight", (c.d_model, ))}
    if c.norm == "layernorm" and c.norm_bias:
        p["bias"] = w.take(name + ".bias", (c.d_model, ))
    return p


def _attn(c, q, k, v, o, qb=None, kb=None, vb=None, ob=None) -> dict:
    """Kernels from [in, out] matrices: q [D, H*Dh], k/v [D, G*Dh], o [H*Dh, D]; biases flat."""
    d, h, g = c.d_model, c.num_heads, c.num_kv_heads or c.num_heads
    hd = c.head_dim or d // h
    p = {
        "query": {"kernel": q.reshape(d, h, hd)}, "key": {"kernel": k.reshape(d, g, hd)},
        "value": {"kernel": v.reshape(d, g, hd)}, "out": {"kernel": o.reshape(h, hd, d)}
    }
    if c.use_bias:
        p["query"]["bias"] = qb.reshape(h, hd)
        p["key"]["bias"] = kb.reshape(g, hd)
        p["value"]["bias"] = vb.reshape(g, hd)
        p["out"]["bias"] = ob
    return p


def _dense(kernel: np.ndarray, bias: np.ndarray | None = None) -> dict:
    return {"kernel": kernel} if bias is None else {"kernel": kernel, "bias": bias}


def _llama_layer(w: Weights, p: str, c) -> dict:
    d, h, g = c.d_model, c.num_heads, c.num_kv_heads or c.num_heads
    hd, f = c.head_dim or d // h, c.d_ff
    lin = lambda n, shape: linear(w.take(p + n, shape))  # noqa: E731
    return {
        "attn_norm": _norm(w, p + "input_layernorm", c),
        "attn": _attn(c, lin("self_attn.q_proj.weight", (h * hd, d)), lin("self_attn.k_proj.weight", (g * hd, d)),
                      lin("self_attn.v_proj.weight", (g * hd, d)), lin("self_attn.o_proj.weight", (d, h * hd))),
        "mlp_norm": _norm(w, p + "post_attention_layernorm", c),
        "mlp": {
            "wg": _dense(lin("mlp.gate_proj.weight", (f, d))), "wi": _dense(lin("mlp.up_proj.weight", (f, d))),
            "wo": _dense(lin("mlp.down_proj.weight", (d, f)))
        },
    }


def _gpt2_layer(w: Weights, p: str, c) -> dict:
    d, f = c.d_model, c.d_ff
    qkv, qkv_b = w.take(p + "attn.c_attn.weight", (d, 3 * d)), w.take(p + "attn.c_attn.bias", (3 * d, ))
    q, k, v = np.split(qkv, 3, axis=1)
    qb, kb, vb = np.split(qkv_b, 3)
    return {
        "attn_norm": _norm(w, p + "ln_1", c),
        "attn": _attn(c, q, k, v, w.take(p + "attn.c_proj.weight", (d, d)), qb, kb, vb,
                      w.take(p + "attn.c_proj.bias", (d, ))),
        "mlp_norm": _norm(w, p + "ln_2", c),
        "mlp": {
            "wi": _dense(w.take(p + "mlp.c_fc.weight", (d, f)), w.take(p + "mlp.c_fc.bias", (f, ))),
            "wo": _dense(w.take(p + "mlp.c_proj.weight", (f, d)), w.take(p + "mlp.c_proj.bias", (d, )))
        },
    }


def _opt_layer(w: Weights, p: str, c) -> dict:
    d, f = c.d_model, c.d_ff
    lin = lambda n, shape: linear(w.take(p + n + ".weight", shape))  # noqa: E731
    b = (lambda n, size: w.take(p + n + ".bias", (size, ))) if c.use_bias else (lambda n, size: None)
    a = "self_attn."
    return {
        "attn_norm": _norm(w, p + "self_attn_layer_norm", c),
        "attn": _attn(c, lin(a + "q_proj", (d, d)), lin(a + "k_proj", (d, d)), lin(a + "v_proj", (d, d)),
                      lin(a + "out_proj", (d, d)), b(a + "q_proj", d), b(a + "k_proj", d), b(a + "v_proj", d),
                      b(a + "out_proj", d)),
        "mlp_norm": _norm(w, p + "final_layer_norm", c),
        "mlp": {"wi": _dense(lin("fc1", (f, d)), b("fc1", f)), "wo": _dense(lin("fc2", (d, f)), b("fc2", d))},
    }


def _mpt_layer(w: Weights, p: str, c) -> dict:
    d, f = c.d_model, c.d_ff
    b = (lambda n, size: w.take(p + n + ".bias", (size, ))) if c.use_bias else (lambda n, size: None)
    qkv = linear(w.take(p + "attn.Wqkv.weight", (3 * d, d)))
    q, k, v = np.split(qkv, 3, axis=1)
    qkv_b = b("attn.Wqkv", 3 * d)
    qb, kb, vb = np.split(qkv_b, 3) if qkv_b is not None else (None, None, None)
    return {
        "attn_norm": _norm(w, p + "norm_1", c),
        "attn": _attn(c, q, k, v, linear(w.take(p + "attn.out_proj.weight", (d, d))), qb, kb, vb, b("attn.out_proj",
                                                                                                    d)),
        "mlp_norm": _norm(w, p + "norm_2", c),
        "mlp": {
            "wi": _dense(linear(w.take(p + "ffn.up_proj.weight", (f, d))), b("ffn.up_proj", f)),
            "wo": _dense(linear(w.take(p + "ffn.down_proj.weight", (d, f))), b("ffn.down_proj", d))
        },
    }


def _neox_layer(w: Weights, p: str, c) -> dict:
    d, h, f = c.d_model, c.num_heads, c.d_ff
    hd = d // h
    qkv = w.take(p + "attention.query_key_value.weight", (3 * d, d)).reshape(h, 3, hd, d)
    qkv_b = w.take(p + "attention.query_key_value.bias", (3 * d, )).reshape(h, 3, hd)
    q, k, v = (qkv[:, i].reshape(h * hd, d).T for i in range(3))
    qb, kb, vb = (qkv_b[:, i].reshape(-1) for i in range(3))
    return {
        "attn_norm": _norm(w, p + "input_layernorm", c),
        "attn": _attn(c, q, k, v, linear(w.take(p + "attention.dense.weight", (d, d))), qb, kb, vb,
                      w.take(p + "attention.dense.bias", (d, ))),
        "mlp_norm": _norm(w, p + "post_attention_layernorm", c),
        "mlp": {
            "wi": _dense(linear(w.take(p + "mlp.dense_h_to_4h.weight", (f, d))),
                         w.take(p + "mlp.dense_h_to_4h.bias", (f, ))),
            "wo": _dense(linear(w.take(p + "mlp.dense_4h_to_h.weight", (d, f))),
                         w.take(p + "mlp.dense_4h_to_h.bias", (d, )))
        },
    }


LAYER_FNS: dict[str, Callable[[Weights, str, Any], dict]] = {
    "llama": _llama_layer, "gpt2": _gpt2_layer, "opt": _opt_layer, "mpt": _mpt_layer, "neox": _neox_layer
}
FINAL_NORMS = {"llama": "norm", "gpt2": "ln_f", "opt": "final_layer_norm", "mpt": "norm_f", "neox": "final_layer_norm"}


def stack_layers(params: dict, num_layers: int) -> dict:
    """layers_0..layers_{n-1} -> one `layers` tree with a leading axis (scan_layers=True)."""
    import jax
    layers = [params.pop(f"layers_{i}") for i in range(num_layers)]
    params["layers"] = jax.tree.map(lambda *xs: np.stack(xs), *layers)
    return params


def params_from_hf(w: Weights, c: ml_collections.ConfigDict, *, tied_head_ok: bool = True) -> dict:
    """DecoderLM params (per-layer form) from the HF tensors in `w`; marks what it used.

    MPT's norms carry biases only in some checkpoints: set `c.norm_bias` before calling (see convert_lm).
    """
    layout = LAYOUTS[c.family]
    root = find_root(w, layout)
    d, v = c.d_model, c.vocab_size
    params: dict[str, Any] = {"embed": {"embedding": w.take(root + layout.embed, (v, d))}}
    if c.positions == "learned":
        name = root + ("wpe.weight" if c.family == "gpt2" else "embed_positions.weight")
        params["pos_embed"] = {"embedding": w.take(name, (c.max_len + c.learned_pos_offset, d))}
    for i in range(c.num_layers):
        params[f"layers_{i}"] = LAYER_FNS[c.family](w, f"{root}{layout.layers}.{i}.", c)
    params["final_norm"] = _norm(w, root + FINAL_NORMS[c.family], c)
    head = layout.head
    if not c.tie_embeddings:
        params["head"] = {"kernel": linear(w.take(head, (v, d)))}
    elif head in w:
        # A tied head saved anyway (older save_pretrained, .bin files): it must equal the embedding.
        out = w.take(head, (v, d))
        if not np.array_equal(out, params["embed"]["embedding"]):
            raise ConversionError(f"{w.source}: config ties the embeddings but {head} differs from "
                                  f"{root + layout.embed}; set tie_word_embeddings=false in config.json")
    for rx in layout.buffers:
        w.ignore(root.replace(".", r"\.") + rx, BUFFER_REASON)
    return params


def prepare_config(hf: dict, w: Weights) -> ml_collections.ConfigDict:
    """config_from_hf plus facts only the tensors tell (MPT norm biases)."""
    c = config_from_hf(hf)
    if c.family == "mpt":
        root = find_root(w, LAYOUTS["mpt"])
        c.norm_bias = f"{root}blocks.0.norm_1.bias" in w
        # transformers' native MPT hard-codes 4 * d_model whatever expansion_ratio says: trust the weights.
        up = f"{root}blocks.0.ffn.up_proj.weight"
        if up in w:
            c.d_ff = int(w.tensors[up].shape[0])
    return c


def convert_lm(hf: dict, w: Weights, *, scan_layers: bool = False) -> tuple[dict, ml_collections.ConfigDict]:
    """(params, lm config) for a HF decoder LM; call w.finish() afterwards to check for leftovers."""
    c = prepare_config(hf, w)
    params = params_from_hf(w, c)
    if scan_layers:
        c.scan_layers = True
        params = stack_layers(params, c.num_layers)
    return params, c
