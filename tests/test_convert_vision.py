"""Parity of converted HuggingFace CLIP vision towers on patch tokens (open_clip ViTs are covered in
test_convert_openflamingo.py, which already loads open_clip by path)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from flamingo_jax.convert import convert_hf, load_converted, save_converted  # noqa: E402
from flamingo_jax.models.vision import build_vision  # noqa: E402

pytestmark = pytest.mark.parity

TOL = 1e-4
VISION = dict(hidden_size=32, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, image_size=32,
              patch_size=8, hidden_act="quick_gelu")


def randomize(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            scale = 0.1 if p.dim() == 1 else 1.0 / p.shape[-1]**0.5 if p.dim() == 2 else 0.2
            p.copy_((1.0 if p.dim() == 1 and "norm" in name else 0.0) + scale * torch.randn(p.shape, generator=g))


def pixels(config, n=3, seed=0):
    """Images in [0, 1] (ours, NHWC) and HF's normalised pixel_values (NCHW)."""
    x = np.random.default_rng(seed).uniform(0, 1, (n, 32, 32, 3)).astype(np.float32)
    normed = (x - np.asarray(config.pixel_mean, np.float32)) / np.asarray(config.pixel_std, np.float32)
    return x, torch.tensor(normed.transpose(0, 3, 1, 2))


def ours(params, config, x):
    return np.asarray(jax.jit(lambda p, x: build_vision(config).apply({"params": p}, x))(params, jnp.asarray(x)))


def test_clip_vision_model(tmp_path):
    torch.manual_seed(0)
    model = transformers.CLIPVisionModel(transformers.CLIPVisionConfig(**VISION)).eval()
    randomize(model)
    model.save_pretrained(str(tmp_path / "hf"))
    out = save_converted(str(tmp_path / "out"), convert_hf(str(tmp_path / "hf")))
    params, config = load_converted(out)
    assert config.ln_post is False and config.act == "quick_gelu" and config.heads == 4
    x, pv = pixels(config)
    with torch.no_grad():
        ref = model(pixel_values=pv).last_hidden_state[:, 1:].numpy()
    diff = float(np.max(np.abs(ours(params, config, x) - ref)))
    print(f"\n[parity] vision HF CLIPVisionModel: max |tokens - HF| = {diff:.2e}")
    assert diff < TOL


def test_clip_model_with_text_tower_and_ln_post(tmp_path):
    torch.manual_seed(1)
    text = dict(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                max_position_embeddings=8)
    model = transformers.CLIPModel(transformers.CLIPConfig(text_config=text, vision_config=VISION,
                                                           projection_dim=8)).eval()
    randomize(model, seed=1)
    model.save_pretrained(str(tmp_path / "hf"))
    result = convert_hf(str(tmp_path / "hf"), ln_post=True)
    assert any(k.startswith("text_model.") for k in result.ignored) and "visual_projection.weight" in result.ignored
    params, config = result.params, result.config
    x, pv = pixels(config, seed=1)
    with torch.no_grad():
        vm = model.vision_model
        ref = vm.post_layernorm(vm(pixel_values=pv).last_hidden_state)[:, 1:].numpy()
    diff = float(np.max(np.abs(ours(params, config, x) - ref)))
    print(f"\n[parity] vision HF CLIPModel (ln_post): max |tokens - HF| = {diff:.2e}")
    assert diff < TOL
