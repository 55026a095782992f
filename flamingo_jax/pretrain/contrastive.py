"""CLIP-style contrastive pretraining of a vision encoder (the paper's NFNet + text tower: Section 2.1,
Appendix B.1.3).

The image tower is the very encoder Flamingo freezes (build_vision(config.model.vision)); its tokens
[N, S, D] are mean-pooled and projected. The text tower is a small bidirectional transformer over the world's
tokens, masked-mean-pooled and projected. Loss: two-way InfoNCE with a learnt temperature,
  L = (CE(s * I T^T, diag) + CE(s * T I^T, diag)) / 2,   I, T: L2-normalised [B, E],  s = exp(logit_scale)
(s starts at 1 / init_temperature and is capped at 100, as in CLIP). Only the encoder is kept: the projection
heads and the text tower are training scaffolding.

Batch ('contrastive' kind, flamingo_jax.data.preprocess): images float32[B, 1, 1, S, S, 3] in [0, 1],
tokens int32[B, L] (<BOS>caption<EOS>, padded), loss_mask float32[B, L] (1 on real tokens).
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from flamingo_jax.models.vision import build_vision
from flamingo_jax.pretrain import common

MAX_LOGIT_SCALE = math.log(100.0)


class TextTower(nn.Module):
    """tokens int32[B, L], mask bool[B, L] -> embedding [B, embed_dim] (pre-LN bidirectional transformer)."""

    vocab_size: int
    width: int = 64
    layers: int = 2
    heads: int = 4
    embed_dim: int = 64
    max_len: int = 64

    @nn.compact
    def __call__(self, tokens: jax.Array, mask: jax.Array) -> jax.Array:
        b, l = tokens.shape
        if l > self.max_len:
            raise ValueError(f"text tower: {l} tokens > max_len {self.max_len}; raise config.text.max_len")
        x = nn.Embed(self.vocab_size, self.width, embedding_init=nn.initializers.normal(0.02), name="embed")(tokens)
        pos = self.param("pos", nn.initializers.normal(0.01), (self.max_len, self.width))
        x = x + pos[:l]
        attn_mask = nn.make_attention_mask(mask, mask)
        for i in range(self.layers):
            h = nn.LayerNorm(name=f"ln_attn_{i}")(x)
            x = x + nn.SelfAttention(self.heads, name=f"attn_{i}")(h, mask=attn_mask)
            h = nn.LayerNorm(name=f"ln_mlp_{i}")(x)
            h = nn.Dense(4 * self.width, name=f"mlp_in_{i}")(h)
            x = x + nn.Dense(self.width, name=f"mlp_out_{i}")(nn.gelu(h))
        x = nn.LayerNorm(name="ln_final")(x)
        m = mask.astype(x.dtype)[..., None]
        pooled = (x * m).sum(1) / jnp.maximum(m.sum(1), 1.0)
        return nn.Dense(self.embed_dim, use_bias=False, name="proj")(pooled)


class CLIP(nn.Module):
    """images float32[B, S, S, 3], tokens int32[B, L], mask bool[B, L] ->
    (image embeddings [B, E], text embeddings [B, E], both L2-normalised; logit scale s, a scalar)."""

    vision_config: ml_collections.ConfigDict
    text_config: ml_collections.ConfigDict
    vocab_size: int
    init_temperature: float = 0.07

    def setup(self):
        t = self.text_config
        self.vision = build_vision(self.vision_config)  # the subtree Flamingo loads: params['vision']
        self.image_proj = nn.Dense(t.embed_dim, use_bias=False)
        self.text = TextTower(self.vocab_size, t.width, t.layers, t.heads, t.embed_dim, t.max_len)
        self.logit_scale = self.param("logit_scale", nn.initializers.constant(-math.log(self.init_temperature)), ())

    def __call__(self, images: jax.Array, tokens: jax.Array, mask: jax.Array):
        feats = self.vision(images).astype(jnp.float32)  # [B, S, D]
        img = self.image_proj(feats.mean(axis=1))
        txt = self.text(tokens, mask)
        normalise = lambda x: x / jnp.linalg.norm(x, axis=-1, keepdims=True).clip(1e-6)  # noqa: E731
        return normalise(img), normalise(txt), jnp.exp(jnp.minimum(self.logit_scale, MAX_LOGIT_SCALE))


def contrastive_loss(image_emb: jax.Array, text_emb: jax.Array, scale: jax.Array) -> tuple[jax.Array, dict]:
    """Two-way InfoNCE. image_emb, text_emb: [B, E] (normalised); pair i is (image i, text i).

    Returns (loss, {'i2t_acc', 't2i_acc'}: in-batch retrieval top-1)."""
    logits = scale * jnp.einsum("ie,te->it", image_emb, text_emb)  # [B, B]
    labels = jnp.arange(logits.shape[0])
    i2t = -jnp.take_along_axis(jax.nn.log_softmax(logits, axis=1), labels[:, None], axis=1).mean()
    t2i = -jnp.take_along_axis(jax.nn.log_softmax(logits, axis=0), labels[None, :], axis=0).mean()
    acc = dict(i2t_acc=(logits.argmax(1) == labels).mean(), t2i_acc=(logits.argmax(0) == labels).mean())
    return 0.5 * (i2t + t2i), acc


def _inputs(batch: dict) -> tuple[jax.Array, jax.Array, jax.Array]:
    images = batch["images"]
    b = images.shape[0]
    images = images.reshape(b, *images.shape[-3:])  # [B, 1, 1, S, S, 3] -> [B, S, S, 3]
    return images, batch["tokens"], batch["loss_mask"] > 0


def build(c: ml_collections.ConfigDict, vocab_size: int) -> CLIP:
    return CLIP(c.model, c.text, vocab_size, c.init_temperature)


def init(model: CLIP, c: ml_collections.ConfigDict, seq_len: int) -> dict:
    s = c.model.image_size
    boxed = model.init(jax.random.key(c.seed), jnp.zeros((1, s, s, 3)), jnp.zeros((1, seq_len), jnp.int32),
                       jnp.ones((1, seq_len), bool))
    return nn.meta.unbox(boxed)["params"]  # plain arrays, as flamingo_jax.convert stores them


def make_loss_fn(model: CLIP):

    def loss_fn(params, batch):
        img, txt, scale = model.apply({"params": params}, *_inputs(batch))
        loss, aux = contrastive_loss(img, txt, scale)
        return loss, dict(aux, temperature=1.0 / scale)

    return loss_fn


def pretrain_vision(config: ml_collections.ConfigDict, workdir: str, *, batches=None,
                    vocab_size: int | None = None) -> str:
    """Contrastively pretrains config's vision encoder on the world's image-caption pairs ('clip' dataset) and
    saves it where `config.pretrained.vision = <returned path>` loads it. Resumes an interrupted run; a
    finished workdir is returned as is.

    config: a pretrain_config('vision', ...) or an experiment config (its model.vision and data).
    batches / vocab_size: an iterator of 'contrastive' batches instead of the data pipeline (tests)."""
    c, workdir = common.stage(config, "vision", workdir)
    if common.is_done(workdir):
        return workdir
    data_iter, batches = common.stage_batches(c, batches)
    if data_iter is not None:
        vocab_size = data_iter.vocab.size
    first = next(batches)
    seq_len = int(first["tokens"].shape[1])
    model = build(c, vocab_size)
    with c.unlocked():
        c.text.max_len = max(int(c.text.max_len), seq_len)
    params = init(model, c, seq_len)

    def chained():
        yield first
        yield from batches

    final = common.run_loop(c, workdir, params, make_loss_fn(model), chained(), data_iter=data_iter,
                            name="pretrain vision")
    last = common.last_metrics(workdir)
    source = dict(format="flamingo_jax.pretrain", objective="CLIP two-way InfoNCE, learnt temperature",
                  dataset=c.dataset, steps=int(c.steps), batch_size=int(first["tokens"].shape[0]), seed=int(c.seed),
                  text_tower=c.text.to_dict())
    notes = [f"final {k} {last[k]:.4f}" for k in ("loss", "i2t_acc", "t2i_acc", "temperature") if k in last]
    ignored = {
        "image_proj": "contrastive projection head (not part of the encoder)", "text": "contrastive text tower",
        "logit_scale": "learnt temperature"
    }
    return common.finish(workdir, "vision", final["vision"], c.model, source, ignored, notes)


def embed(config: ml_collections.ConfigDict, params: dict, images: np.ndarray) -> np.ndarray:
    """Mean-pooled encoder features [N, D] of images float32[N, S, S, 3] (e.g. to probe a pretrained tower)."""
    feats = build_vision(config).apply({"params": params}, jnp.asarray(images))
    return np.asarray(feats.mean(axis=1))
