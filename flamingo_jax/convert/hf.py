"""A local HuggingFace checkpoint directory -> our LM or vision params and config.

    result = convert_hf("/ckpts/llama-7b")              # reads config.json + *.safetensors (or .bin)
    save_converted("/out/llama-7b", result)               # Orbax params + config.json snippet
    params, lm_cfg = load_converted("/out/llama-7b")     # what the trainer loads into params['lm']

The model kind follows config.json's `model_type`: decoder LMs (llama, mistral, gpt2, opt, mpt,
gpt_neox) or CLIP vision towers (clip_vision_model, clip). Every tensor must be used or ignored for a
stated reason (see `Converted.ignored`); anything else raises UnusedWeightsError listing the names.
"""

from __future__ import annotations

import os

from flamingo_jax.convert import lm_hf, vision_hf
from flamingo_jax.convert.check import check_params
from flamingo_jax.convert.store import Converted
from flamingo_jax.convert.weights import Weights, read_config, read_dir, read_file


def convert_hf(src: str, *, scan_layers: bool = False, ln_post: bool = False) -> Converted:
    """Converts the HuggingFace checkpoint directory `src`.

    scan_layers: LMs only, stack the layers for `scan_layers=True` models. ln_post: CLIP vision only,
    also apply post_layernorm to the tokens (HF's last_hidden_state does not).
    """
    hf = read_config(src)
    w = Weights(read_dir(src), src)
    notes: list[str] = []
    if hf.get("model_type") in vision_hf.VISION_TYPES:
        pre_path = os.path.join(src, "preprocessor_config.json")
        pre = read_config(src, "preprocessor_config.json") if os.path.isfile(pre_path) else None
        if pre is None:
            notes.append("no preprocessor_config.json: pixel mean/std default to OpenAI CLIP's")
        config = vision_hf.hf_clip_config(hf, ln_post=ln_post, preprocessor=pre)
        params = vision_hf.hf_clip_params(w, config)
        kind = "vision"
    else:
        params, config = lm_hf.convert_lm(hf, w, scan_layers=scan_layers)
        kind = "lm"
        if hf.get("sliding_window") and hf.get("model_type") == "mistral":
            notes.append(f"sliding_window={hf['sliding_window']} is not modelled: outputs match only for "
                         "sequences up to that length")
    ignored = w.finish()
    check_params(params, kind, config)
    return Converted(kind, params, config, source=dict(format="hf", src=os.path.abspath(src),
                                                       model_type=hf.get("model_type")), ignored=ignored, notes=notes)


def convert_open_clip(path: str, *, act: str = "quick_gelu", ln_post: bool = False,
                      heads: int | None = None) -> Converted:
    """An open_clip VisionTransformer state dict file (full CLIP checkpoint or `visual` alone) -> our ViT.

    act: quick_gelu (OpenAI CLIP weights) or gelu (most LAION-trained towers). ln_post: the tokens pass
    ln_post, as open_clip >= 2.24 returns them. heads: default width // 64.
    """
    w = Weights(read_file(path), path)
    config = vision_hf.open_clip_config(w, act=act, ln_post=ln_post, heads=heads)
    params = vision_hf.open_clip_params(w, config)
    ignored = w.finish()
    check_params(params, "vision", config)
    return Converted("vision", params, config, source=dict(format="open_clip", src=os.path.abspath(path)),
                     ignored=ignored)
