"""Vision towers -> our CLIP-style `ViT` params and `vision_config('vit', ...)`.

- HuggingFace CLIP (`CLIPVisionModel`, `CLIPVisionModelWithProjection` or a full `CLIPModel`, whose
  text tower is ignored): the config comes from config.json. Our tokens match HF's `last_hidden_state`
  without the class token; `post_layernorm` only feeds HF's pooled output, so it is used only with
  `ln_post=True` (then the tokens match post_layernorm(last_hidden_state)).
- open_clip `VisionTransformer` state dicts (`visual.*` inside a full CLIP checkpoint, or bare): a state
  dict has no config, so width, depth, patch and image size are read from the shapes, heads default to
  width // 64 (open_clip's head width), and the activation and `ln_post` must be given: OpenAI CLIP
  (OpenFlamingo's ViT-L/14) uses QuickGELU; open_clip >= 2.24 normalises the tokens with ln_post
  (final_ln_after_pool=False), earlier versions (which OpenFlamingo was trained with) did not.

Layouts: the patch conv weight [out, in, kh, kw] -> patch_embed kernel [kh, kw, in, out]; open_clip's fused
in_proj [3D, D] splits into q | k | v; attention kernels [D, H, Dh] and [H, Dh, D].
"""

from __future__ import annotations

import math
import re

import ml_collections
import numpy as np

from flamingo_jax.models.vision import CLIP_MEAN, CLIP_STD, VIT_SIZES, vision_config
from flamingo_jax.convert.lm_hf import HF_ACTIVATIONS
from flamingo_jax.convert.weights import ConversionError, Weights, linear

POOLED_ONLY = "feeds only the pooled/contrastive output, not the patch tokens"
OTHER_TOWER = "text tower of a CLIP checkpoint (only the vision tower is converted)"
VISION_TYPES = ("clip_vision_model", "clip")


def _vit_config(width: int, layers: int, heads: int, patch: int, image: int, mlp_ratio: int, act: str, ln_post: bool,
                eps: float, mean=CLIP_MEAN, std=CLIP_STD) -> ml_collections.ConfigDict:
    arch = dict(width=width, layers=layers, heads=heads, patch_size=patch, image_size=image)
    size = next((k for k, v in VIT_SIZES.items() if v == arch), "L/14")
    c = vision_config("vit", size, **arch, mlp_ratio=mlp_ratio, act=act, ln_post=ln_post, norm_eps=eps,
                      class_token=True, drop_class_token=True, patch_bias=False,
                      pixel_mean=tuple(float(x) for x in mean), pixel_std=tuple(float(x) for x in std))
    if VIT_SIZES.get(size) != arch:
        c.size = "custom"
    return c


def _ln(w: Weights, name: str, d: int) -> dict:
    return {"scale": w.take(name + ".weight", (d, )), "bias": w.take(name + ".bias", (d, ))}


def _attn(q, k, v, o, qb, kb, vb, ob, heads: int) -> dict:
    """q/k/v/o kernels [in, out] and flat biases -> ViTAttention params."""
    d = q.shape[0]
    hd = d // heads
    return {
        "query": {"kernel": q.reshape(d, heads, hd), "bias": qb.reshape(heads, hd)},
        "key": {"kernel": k.reshape(d, heads, hd), "bias": kb.reshape(heads, hd)},
        "value": {"kernel": v.reshape(d, heads, hd),
                  "bias": vb.reshape(heads, hd)}, "out": {"kernel": o.reshape(heads, hd, d), "bias": ob}
    }


# ------------------------------------------------------------------------------------ HuggingFace


def hf_clip_config(hf: dict, *, ln_post: bool = False, preprocessor: dict | None = None) -> ml_collections.ConfigDict:
    """vision_config from a CLIPVisionModel / CLIPModel config.json (and preprocessor_config.json)."""
    vc = hf.get("vision_config", hf) if hf.get("model_type") == "clip" else hf
    d, inner = vc["hidden_size"], vc["intermediate_size"]
    if inner % d:
        raise ConversionError(f"intermediate_size {inner} is not a multiple of hidden_size {d}")
    act = vc.get("hidden_act", "quick_gelu")
    if act not in HF_ACTIVATIONS:
        raise ConversionError(f"unsupported vision activation {act!r}")
    pre = preprocessor or {}
    return _vit_config(d, vc["num_hidden_layers"], vc["num_attention_heads"], vc["patch_size"], vc["image_size"],
                       inner // d, HF_ACTIVATIONS[act], ln_post, vc.get("layer_norm_eps", 1e-5),
                       pre.get("image_mean", CLIP_MEAN), pre.get("image_std", CLIP_STD))


def _vit_params(w: Weights, c: ml_collections.ConfigDict, *, patch: str, cls: str, pos: str, ln_pre: str, block,
                ln_1: str, ln_2: str, fc1: str, fc2: str, attn) -> dict:
    """Our ViT's params from one checkpoint layout: patch, cls, pos, ln_pre name the embedding tensors and the
    first norm; block(i) is layer i's name prefix, inside which ln_1, ln_2, fc1, fc2 name the norms and the MLP
    linears; attn(t, d) returns _attn's q, k, v, out kernels and biases read through t(name, shape)."""
    d, p, f = c.width, c.patch_size, c.mlp_ratio * c.width
    grid = c.image_size // p
    params = {
        "patch_embed": {"kernel": w.take(patch, (d, 3, p, p)).transpose(2, 3, 1, 0)},
        "class_embedding": w.take(cls, (d, )),
        "positional_embedding": w.take(pos, (grid * grid + 1, d)),
        "ln_pre": _ln(w, ln_pre, d),
    }
    for i in range(c.layers):
        b = block(i)
        t = lambda n, shape, b=b: w.take(b + n, shape)  # noqa: E731
        params[f"block{i}"] = {
            "ln_1": _ln(w, b + ln_1, d),
            "attn": _attn(*attn(t, d), c.heads),
            "ln_2": _ln(w, b + ln_2, d),
            "mlp": {
                "wi": {"kernel": linear(t(fc1 + ".weight", (f, d))), "bias": t(fc1 + ".bias", (f, ))},
                "wo": {"kernel": linear(t(fc2 + ".weight", (d, f))), "bias": t(fc2 + ".bias", (d, ))}
            },
        }
    return params


def hf_clip_params(w: Weights, c: ml_collections.ConfigDict) -> dict:
    """ViT params from HF CLIP vision tensors (`vision_model.*`); other towers are ignored with a reason."""
    root = "vision_model."
    if root + "embeddings.class_embedding" not in w:
        raise ConversionError(f"{w.source}: no vision_model.embeddings.class_embedding (not a HF CLIP checkpoint)")
    e, a = root + "embeddings.", "self_attn."

    def attn(t, d):
        return (*(linear(t(a + n + "_proj.weight", (d, d))) for n in "qkv"), linear(t(a + "out_proj.weight", (d, d))),
                *(t(a + n + "_proj.bias", (d, )) for n in "qkv"), t(a + "out_proj.bias", (d, )))

    params = _vit_params(w, c, patch=e + "patch_embedding.weight", cls=e + "class_embedding",
                         pos=e + "position_embedding.weight", ln_pre=root + "pre_layrnorm",
                         block=lambda i: f"{root}encoder.layers.{i}.", ln_1="layer_norm1", ln_2="layer_norm2",
                         fc1="mlp.fc1", fc2="mlp.fc2", attn=attn)
    if c.ln_post:
        params["ln_post"] = _ln(w, root + "post_layernorm", c.width)
    else:
        w.ignore(r"vision_model\.post_layernorm\.(weight|bias)", POOLED_ONLY + " (pass ln_post=True to use it)")
    w.ignore(r"vision_model\.embeddings\.position_ids", "buffer recomputed by the model (not a learnt weight)")
    w.ignore(r"visual_projection\.weight", POOLED_ONLY)
    w.ignore(r"(text_model\..*|text_projection\.weight|logit_scale)", OTHER_TOWER)
    return params


# --------------------------------------------------------------------------------------- open_clip


def open_clip_prefix(w: Weights) -> str:
    return "visual." if any(k.startswith("visual.") for k in w.names()) else ""


def open_clip_config(w: Weights, *, act: str = "quick_gelu", ln_post: bool = False, heads: int | None = None,
                     eps: float = 1e-5, pixel_mean=CLIP_MEAN, pixel_std=CLIP_STD) -> ml_collections.ConfigDict:
    """vision_config inferred from an open_clip VisionTransformer state dict's shapes."""
    pre = open_clip_prefix(w)
    if pre + "conv1.weight" not in w or pre + "class_embedding" not in w:
        raise ConversionError(f"{w.source}: no {pre}conv1.weight / {pre}class_embedding "
                              "(not an open_clip VisionTransformer state dict)")
    conv = w.tensors[pre + "conv1.weight"]
    d, p = conv.shape[0], conv.shape[-1]
    tokens = w.tensors[pre + "positional_embedding"].shape[0] - 1
    grid = math.isqrt(tokens)
    if grid * grid != tokens:
        raise ConversionError(f"{w.source}: {tokens} position rows do not form a square grid")
    layers = 0
    while f"{pre}transformer.resblocks.{layers}.ln_1.weight" in w:
        layers += 1
    f = w.tensors[f"{pre}transformer.resblocks.0.mlp.c_fc.weight"].shape[0]
    if f % d:
        raise ConversionError(f"MLP width {f} is not a multiple of width {d}")
    heads = heads or d // 64
    if d % heads:
        raise ConversionError(f"width {d} does not split into {heads} heads")
    return _vit_config(d, layers, heads, p, grid * p, f // d, act, ln_post, eps, pixel_mean, pixel_std)


def open_clip_params(w: Weights, c: ml_collections.ConfigDict) -> dict:
    """ViT params from an open_clip VisionTransformer state dict (prefixed `visual.` or bare)."""
    pre = open_clip_prefix(w)
    for i in range(c.layers):
        if f"{pre}transformer.resblocks.{i}.ls_1.gamma" in w:
            raise ConversionError(f"{w.source}: LayerScale (ls_1/ls_2) is not supported by our ViT")

    def attn(t, d):
        q, k, v = np.split(linear(t("attn.in_proj_weight", (3 * d, d))), 3, axis=1)
        qb, kb, vb = np.split(t("attn.in_proj_bias", (3 * d, )), 3)
        return q, k, v, linear(t("attn.out_proj.weight", (d, d))), qb, kb, vb, t("attn.out_proj.bias", (d, ))

    params = _vit_params(w, c, patch=pre + "conv1.weight", cls=pre + "class_embedding",
                         pos=pre + "positional_embedding", ln_pre=pre + "ln_pre",
                         block=lambda i: f"{pre}transformer.resblocks.{i}.", ln_1="ln_1", ln_2="ln_2", fc1="mlp.c_fc",
                         fc2="mlp.c_proj", attn=attn)
    if c.ln_post:
        params["ln_post"] = _ln(w, pre + "ln_post", c.width)
    else:
        w.ignore(
            re.escape(pre) + r"ln_post\.(weight|bias)",
            POOLED_ONLY + " in open_clip < 2.24 (pass ln_post=True for >= 2.24 token outputs)")
    w.ignore(re.escape(pre) + "proj", POOLED_ONLY)
    if pre:  # a full open_clip CLIP checkpoint: everything outside `visual.` is the text tower
        w.ignore(r"(?!visual\.).*", OTHER_TOWER)
    return params
