"""Next-token pretraining of the decoder LM (flamingo_jax.models.lm.DecoderLM) on the world's text corpus.

Batch ('text' kind, flamingo_jax.data.preprocess): tokens int32[B, L], targets int32[B, L] (tokens shifted by
one), loss_mask float32[B, L]. Loss: mean over real target tokens of -log p(target | prefix). The LM's base
vocabulary must be the data's (config.model.lm.vocab_size = config.data.vocab.size): Flamingo's `<image>` and
`<EOC>` rows are added on top of it (new_tokens), never part of the pretrained LM.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from flamingo_jax.models.lm import DecoderLM
from flamingo_jax.pretrain import common


def next_token_loss(logits: jax.Array, targets: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(mean NLL over mask, token accuracy). logits float32[B, L, V], targets int32[B, L], mask [B, L]."""
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    nll = -jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
    m = mask.astype(jnp.float32)
    denom = jnp.maximum(m.sum(), 1.0)
    acc = ((logits.argmax(-1) == targets) * m).sum() / denom
    return (nll * m).sum() / denom, acc


def make_loss_fn(model: DecoderLM):

    def loss_fn(params, batch):
        logits, _ = model.apply({"params": params}, batch["tokens"])
        loss, acc = next_token_loss(logits, batch["targets"], batch["loss_mask"])
        return loss, dict(accuracy=acc, perplexity=jnp.exp(loss))

    return loss_fn


def pretrain_lm(config: ml_collections.ConfigDict, workdir: str, *, batches=None) -> str:
    """Pretrains config's LM on the world's text ('text' dataset) and saves it where
    `config.pretrained.lm = <returned path>` loads it. Resumes an interrupted run; a finished workdir is
    returned as is.

    config: a pretrain_config('lm', ...) or an experiment config (its model.lm and data).
    batches: an iterator of 'text' batches instead of the data pipeline (tests)."""
    c, workdir = common.stage(config, "lm", workdir)
    if common.is_done(workdir):
        return workdir
    data_iter, batches = common.stage_batches(c, batches)
    if data_iter is not None and data_iter.vocab.base_size != c.model.vocab_size:
        raise ValueError(f"LM vocab_size {c.model.vocab_size} != the data vocabulary's {data_iter.vocab.base_size}:"
                         " set config.model.lm.vocab_size = config.data.vocab.size")
    model = DecoderLM(c.model)
    params = nn.meta.unbox(model.init(jax.random.key(c.seed), jnp.zeros((1, 2), jnp.int32)))["params"]
    final = common.run_loop(c, workdir, params, make_loss_fn(model), batches, data_iter=data_iter, name="pretrain lm")
    last = common.last_metrics(workdir)
    source = dict(format="flamingo_jax.pretrain", objective="next-token cross-entropy", dataset=c.dataset,
                  steps=int(c.steps), seed=int(c.seed))
    if data_iter is not None:  # what the trainer checks its data's vocabulary against (run_checks.check_vocabulary)
        source["vocab_sha256"] = data_iter.vocab.fingerprint()
    notes = [f"final {k} {last[k]:.4f}" for k in ("loss", "accuracy", "perplexity") if k in last]
    if "loss" in last:
        notes.append(f"uniform-guess loss would be {math.log(c.model.vocab_size):.4f}")
    return common.finish(workdir, "lm", final, c.model, source, {}, notes)
