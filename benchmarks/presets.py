"""Benchmark presets: the configurations OpenFlamingo 2.0.1 was timed with, in `openflamingo` compatibility mode.

Each preset matches ../shared/peer/tiny_of.py's CONFIGS entry of the same name built with `--lm llama`:
    vision  open_clip VisionTransformer(image_size, patch 8, width, layers, heads, mlp_ratio 4): exact-erf GELU
            (open_clip's default act_layer), no patch bias, class token dropped, ln_post on the tokens
            (open_clip 2.24, final_ln_after_pool=False)
    lm      transformers LlamaConfig(vocab 512, hidden d, intermediate 4d, layers, heads, rms_norm_eps 1e-6,
            rope theta 1e4, untied head): gated SiLU FFW of width 4d, heads of d / H, no biases
    tokens  `<|endofchunk|>`, `<image>`, `<PAD>` added (vocab 515)
    flamingo perceiver depth 6, 64 latents, 8x64 heads, FFW x4; gated cross-attention 8x64 heads, FFW x4,
            before every LM layer (cross_attn_every_n_layers=1); fp32 everywhere
    batch   B sequences of L tokens with `n_img` one-frame images each
"""

from __future__ import annotations

import ml_collections

from flamingo_jax import configs
from flamingo_jax.data.config import default_data_config
from flamingo_jax.models import lm_config, openflamingo_config, vision_config

PRESETS: dict[str, dict] = {
    # vision: image, width, layers, heads | lm: d, layers, heads | batch, tokens, images per sequence
    "tiny": dict(img=32, vw=64, vl=2, vh=2, d=64, L=2, H=2, B=2, T=48, n_img=2),
    "small": dict(img=64, vw=256, vl=4, vh=4, d=256, L=4, H=4, B=4, T=128, n_img=3),
    "wide": dict(img=64, vw=1024, vl=2, vh=16, d=2048, L=2, H=16, B=2, T=128, n_img=3),
}
BASE_VOCAB = 512  # tiny_of.py's VOCAB, before the 3 added tokens
DATASET = "bench"


def preset_model_config(name: str, *, scan_layers: bool = False) -> ml_collections.ConfigDict:
    """config.model of preset `name` (see the module docstring)."""
    p = PRESETS[name]
    vis = vision_config("vit", "tiny", width=p["vw"], layers=p["vl"], heads=p["vh"], patch_size=8, image_size=p["img"],
                        act="gelu", ln_post=True)
    lm = lm_config("llama", vocab_size=BASE_VOCAB, d_model=p["d"], num_layers=p["L"], num_heads=p["H"], d_ff=4 * p["d"],
                   norm_eps=1e-6, max_len=1024, scan_layers=scan_layers)
    return openflamingo_config(vis, lm, cross_attn_every_n_layers=1, add_pad_token=True, dtype="float32")


def preset_config(name: str, *, scan_layers: bool = False) -> ml_collections.ConfigDict:
    """A full trainer config (flamingo_jax.train) for preset `name`: one synthetic dataset, one device."""
    p = PRESETS[name]
    config = ml_collections.ConfigDict()
    config.model = preset_model_config(name, scan_layers=scan_layers)
    config.seed = 0
    data = default_data_config()
    data.source = "synthetic"
    data.image_size = p["img"]
    data.mixture = [DATASET]
    bench = data.datasets.m3w.copy_and_resolve_references()
    bench.update(dict(weight=1.0, batch_size=p["B"], seq_len=p["T"], max_images=p["n_img"], frames=1))
    data.datasets = ml_collections.ConfigDict({DATASET: bench})
    configs.add_training(config, data, total_steps=1_000_000, log_every=100, warmup_steps=0)
    config.mesh.data = 1  # one device: a benchmark of the step, not of collectives
    return config
