"""The one helper that builds tiny models and inputs for tests (shared so JAX compiles stay few)."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from flamingo_jax.models import build, lm_config, model_config, resampler_config, vision_config, xattn_config

KEY = jax.random.key(0, impl="unsafe_rbg")  # threefry init compiles several times slower on XLA:CPU
VOCAB = 40
IMAGE = 16


def tiny_model_config(kind: str = "gated", *, scan: bool = False, every: int = 1, placement: str = "every",
                      family: str = "llama", num_layers: int = 4, mask: str = "previous", gating: bool = True,
                      resampler: str = "perceiver", max_frames: int = 2, frames_latents: int = 4):
    lm = lm_config(family, vocab_size=VOCAB, d_model=32, num_layers=num_layers, num_heads=4, max_len=64,
                   scan_layers=scan)
    return model_config(
        vision_config("vit", "tiny", image_size=IMAGE),
        lm,
        resampler_config(resampler, num_latents=frames_latents, depth=2, num_heads=2, max_frames=max_frames),
        xattn_config(kind, every=every, placement=placement, num_heads=2, mask=mask, gating=gating),
    )


def images(batch: int = 2, num_images: int = 3, frames: int = 1, seed: int = 0) -> jax.Array:
    """float32[B, T, F, H, W, 3] in [0, 1]."""
    rng = np.random.default_rng(seed)
    return jnp.asarray(rng.random((batch, num_images, frames, IMAGE, IMAGE, 3)), jnp.float32)


def tokens_with_images(config, batch: int = 2, length: int = 12, image_positions=(2, 7), seed: int = 0):
    """Random text with `<image>` at `image_positions` and `<EOC>` right before every image but the first."""
    rng = np.random.default_rng(seed)
    t = rng.integers(0, VOCAB, (batch, length))
    for j, p in enumerate(image_positions):
        t[:, p] = config.image_token_id
        if j:
            t[:, p - 1] = config.eoc_token_id
    return jnp.asarray(t, jnp.int32)


def init_params(config, tokens, imgs, image_mask, media_index=None):
    """Unboxed params of the Flamingo model for `config` (boxed variables as the second value)."""
    model = build(config)
    boxed = jax.jit(model.init)(KEY, tokens, imgs, image_mask, media_index)
    return model, nn.meta.unbox(boxed)["params"], boxed


def set_gates(params, value: float):
    """Every tanh gate set to `value`."""

    def fix(path, x):
        return jnp.full_like(x, value) if str(path[-1].key).endswith("_gate") else x

    return jax.tree_util.tree_map_with_path(fix, params)


def tiny_train_config(mixture=("m3w", "align"), total_steps: int = 3, mesh=(-1, 1, 1), mode: str = "accumulate"):
    """experiments/tiny.py on synthetic batches (no files), small enough to compile in seconds."""
    from pathlib import Path

    from flamingo_jax.config_files import load_config

    config = load_config(str(Path(__file__).parents[1] / "experiments" / "tiny.py"))
    config.data.source = "synthetic"
    config.data.mode = mode
    config.data.mixture = list(mixture)
    config.data.datasets.m3w.seq_len = 32
    config.data.datasets.m3w.max_images = 3
    config.data.datasets.m3w.batch_size = 8
    config.data.datasets.align.batch_size = 8
    config.data.datasets.align.seq_len = 16
    config.total_steps = total_steps
    config.log_every = 1
    config.mesh.data, config.mesh.fsdp, config.mesh.model = mesh
    return config


def world_eval_model():
    """The evaluation tests' model of the tiny world: (model config, data config, vocab, module, params with every
    gate at 0.5, so that cross-attention changes the outputs)."""
    from flamingo_jax.data.testing import tiny_config, tiny_vocab

    data = tiny_config()
    vocab = tiny_vocab()
    model_cfg = tiny_model_config(num_layers=1, max_frames=4)
    model_cfg.lm.vocab_size = vocab.base_size
    model_cfg.image_token_id, model_cfg.eoc_token_id = vocab.image_id, vocab.eoc_id
    model_cfg.vision.image_size = data.image_size
    s = data.image_size
    model, params, _ = init_params(model_cfg, jnp.zeros((1, 4), jnp.int32), jnp.zeros((1, 1, 1, s, s, 3)),
                                   jnp.ones((1, 1), bool))
    return model_cfg, data, vocab, model, set_gates(params, 0.5)
