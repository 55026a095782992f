"""Own-image cross-attention (models/media_attention.py): chunks of tokens scoring a window of images must give
what the dense per-image mask gives, on few-shot layouts (the window fits) and on crowded ones (the dense
fallback), in the attention function and in the whole model."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flamingo_jax.models import media_attention
from flamingo_jax.models.attention import dot_product_attention
from flamingo_jax.models.media_attention import CHUNK, WINDOW, OwnImageMask
from flamingo_jax.models.xattn import default_media_index
from tiny import IMAGE, VOCAB, init_params, set_gates, tiny_model_config

K = 4  # visual tokens per image


def _layout(length: int, image_every: int, first: int, batch: int = 2) -> np.ndarray:
    """int32[B, L] media indices: row b's first `first + b` tokens see no image (left padding, text before the
    first image), then an image every `image_every` tokens."""
    out = np.zeros((batch, length), np.int32)
    for b in range(batch):
        start = first + b
        out[b, start:] = 1 + (np.arange(length - start) // image_every)
    return out


def _qkv(length: int, images: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    q = jnp.asarray(rng.normal(size=(2, length, 2, 8)), jnp.float32)
    k = jnp.asarray(rng.normal(size=(2, images * K, 2, 8)), jnp.float32)
    v = jnp.asarray(rng.normal(size=(2, images * K, 2, 8)), jnp.float32)
    return q, k, v


@pytest.mark.parametrize("image_every, fits", [(13, True), (2, False)])
def test_windowed_attention_equals_the_dense_mask(image_every, fits):
    length = 5 * CHUNK + 7  # not a multiple of the chunk: the padded tail is cut off
    images = -(-(length - 3) // image_every)
    mi = _layout(length, image_every, first=3)
    present = np.ones((2, images), bool)
    present[1, 2] = False  # an absent image slot: its tokens see nothing, as under the dense mask
    mask = OwnImageMask(jnp.asarray(mi), jnp.asarray(present), K)
    assert bool(mask._windows()[1]) is fits  # few-shot spacing fits the window; adjacent images do not
    q, k, v = _qkv(length, images)
    got = jax.jit(lambda q, k, v, m: dot_product_attention(q, k, v, m))(q, k, v, mask)
    want = dot_product_attention(q, k, v, mask.dense())
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=2e-6, rtol=1e-6)
    assert not np.asarray(got)[0, :3].any()  # tokens before the first image: exactly zero
    absent = mi[1] == 3
    assert not np.asarray(got)[1, absent].any()


def test_every_chunk_scores_at_most_its_window():
    """The point of the module: a chunk's scores cover WINDOW images, not all of them."""
    length, images = 4 * CHUNK, 3 * WINDOW
    mask = OwnImageMask(jnp.asarray(_layout(length, 11, first=0)), jnp.ones((2, images), bool), K)
    starts, fits = mask._windows()
    assert bool(fits)
    q, k, v = _qkv(length, images)
    jaxpr = str(jax.make_jaxpr(lambda q, k, v: mask._windowed(q, k, v, starts, None))(q, k, v))
    assert f"{length // CHUNK},2,{CHUNK},{WINDOW * K}]" in jaxpr.replace(" ", "")  # scores [B, n, H, C, W*K]
    assert f",{images * K}]" not in jaxpr.replace(" ", "")


def test_the_model_gives_the_same_logits_with_and_without_windowing(monkeypatch):
    # The tiny LM's 64 positions hold few 32-token chunks: shrink the chunk and window to what fits in it.
    monkeypatch.setattr(media_attention, "CHUNK", 8)
    monkeypatch.setattr(media_attention, "WINDOW", 3)
    config = tiny_model_config()
    images, length = 10, 56
    rng = np.random.default_rng(1)
    tokens = rng.integers(0, VOCAB, (2, length)).astype(np.int32)
    tokens[0, 2:2 + 5 * images:5] = config.image_token_id  # an example every 5 tokens, as a few-shot prompt
    tokens[1, 9:9 + 5 * (images - 2):5] = config.image_token_id  # row 1: later, and its last 2 slots empty
    imgs = jnp.asarray(rng.random((2, images, 1, IMAGE, IMAGE, 3)), jnp.float32)
    count = (tokens == config.image_token_id).sum(1)
    image_mask = jnp.asarray(np.arange(images)[None] < count[:, None])
    tokens = jnp.asarray(tokens)
    model, params, _ = init_params(config, tokens[:, :8], imgs[:, :1], image_mask[:, :1])
    params = set_gates(params, 0.8)  # at 0 the cross-attention adds nothing and any mask would pass
    assert OwnImageMask.applies(images, length)
    mi = default_media_index(tokens, config.image_token_id)
    assert bool(OwnImageMask(mi, image_mask, 1)._windows()[1])  # the windowed branch is the one compared

    def logits(p):
        return np.asarray(jax.jit(model.apply)({"params": p}, tokens, imgs, image_mask))

    windowed = logits(params)
    monkeypatch.setattr(media_attention.OwnImageMask, "applies", staticmethod(lambda t, l: False))
    dense = logits(params)
    np.testing.assert_allclose(windowed, dense, atol=2e-5, rtol=1e-5)
    assert np.abs(dense - logits(set_gates(params, 0.0))).max() > 1e-3  # the images do reach these logits
