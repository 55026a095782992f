"""flamingo_jax.pretrain: the contrastive loss, both stages learning on tiny synthetic sets, resume, and the saved
towers loading through load_converted into a Flamingo model (the trainer's own load_pretrained)."""

from __future__ import annotations

import itertools
import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

import tiny
from flamingo_jax import pretrain
from flamingo_jax.convert import load_converted, read_manifest
from flamingo_jax.pretrain import common, contrastive_loss, next_token_loss

B, L = 8, 8


def _as_json(cfg):
    return json.loads(json.dumps(cfg.to_dict(), default=list))


def _normalise(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_contrastive_loss_symmetric_and_minimal_for_matched_pairs():
    rng = np.random.default_rng(0)
    img = jnp.asarray(_normalise(rng.normal(size=(B, 16))))
    txt = jnp.asarray(_normalise(rng.normal(size=(B, 16))))
    loss, _ = contrastive_loss(img, txt, 10.0)
    swapped, _ = contrastive_loss(txt, img, 10.0)
    assert float(loss) == pytest.approx(float(swapped), rel=1e-6)  # two-way: images and texts play equal roles
    basis = jnp.eye(B, 16)
    matched, acc = contrastive_loss(basis, basis, 10.0)
    shuffled, acc_s = contrastive_loss(basis, basis[np.roll(np.arange(B), 1)], 10.0)
    assert float(matched) < float(shuffled) and float(acc["i2t_acc"]) == 1.0 and float(acc_s["t2i_acc"]) == 0.0
    assert float(contrastive_loss(basis, basis, 100.0)[0]) < 1e-3  # a sharp temperature: near zero
    assert float(contrastive_loss(basis, basis, 1e-6)[0]) == pytest.approx(np.log(B), rel=1e-4)  # chance


def test_next_token_loss():
    logits = jnp.log(jnp.asarray([[[0.5, 0.25, 0.25], [0.1, 0.1, 0.8]]]))
    loss, acc = next_token_loss(logits, jnp.asarray([[0, 2]]), jnp.asarray([[1.0, 0.0]]))
    assert float(loss) == pytest.approx(-np.log(0.5)) and float(acc) == 1.0


def _clip_batches():
    """Pairs whose caption token names the image's colour pattern: learnable in a few steps."""
    rng = np.random.default_rng(0)
    s = tiny.IMAGE
    images = np.zeros((B, 1, 1, s, s, 3), np.float32)
    tokens = np.zeros((B, L), np.int32)
    mask = np.zeros((B, L), np.float32)
    for i in range(B):
        images[i, 0, 0, :, :, i % 3] = 1.0
        images[i, 0, 0, :s // 2 * (i // 3 + 1) // 2] *= 0.3
        images[i] += 0.05 * rng.random(images[i].shape)
        tokens[i, :3] = (1, 3 + i, 2)
        mask[i, :3] = 1
    batch = dict(images=images, tokens=tokens, loss_mask=mask, targets=tokens, media_index=0 * tokens,
                 image_mask=np.ones((B, 1), bool))
    while True:
        yield batch


def _text_batches(start: int = 0):
    """Batch i (from `start`): rows of a cyclic sequence (period 6) rolled by i + row, its loss on the last
    L - i % 3 tokens: a different batch at each of the steps below, so that a resumed run only ends where an
    uninterrupted one does when it resumes at the right step."""
    seq = np.tile(np.arange(4, 4 + 6), 4)
    for i in itertools.count(start):
        tokens = np.stack([np.roll(seq, i + r)[:L + 1] for r in range(4)]).astype(np.int32)
        mask = np.ones((4, L), np.float32)
        mask[:, :i % 3] = 0.0
        yield dict(tokens=tokens[:, :-1], targets=tokens[:, 1:], loss_mask=mask)


def _rows(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def _losses(workdir):
    return [r["loss"] for r in _rows(workdir)]


@pytest.fixture(scope="module")
def flamingo_config():
    return tiny.tiny_model_config(num_layers=2)


def _stage(kind, model, steps, **kw):
    data = ml_collections.ConfigDict(dict(datasets={}))
    return pretrain.pretrain_config(kind, model, data, steps=steps, log_every=1, warmup_steps=2, lr=3e-3,
                                    text=dict(width=32, layers=1, heads=2, embed_dim=16, max_len=L), **kw)


def _plug(model_config, **paths):
    """The trainer's own loading path: init without the pretrained subtrees, then load_pretrained."""
    from flamingo_jax import models, sharding
    from flamingo_jax.train_state import init_params, load_pretrained

    config = ml_collections.ConfigDict(dict(model=model_config, pretrained={"vision": "", "lm": "", **paths}))
    mesh = sharding.make_mesh(ml_collections.ConfigDict(dict(data=-1, fsdp=1, model=1)))
    model = models.build(model_config)
    params, shardings, abstract = init_params(model, model_config, mesh, tiny.KEY, skip=tuple(paths))
    params.update(load_pretrained(config, shardings, abstract))
    return model, params


def test_pretrain_vision_learns_saves_and_plugs_in(tmp_path, flamingo_config):
    out = str(tmp_path / "vision")
    path = pretrain.pretrain_vision(_stage("vision", flamingo_config.vision, 12), out, batches=_clip_batches(),
                                    vocab_size=3 + B)
    losses = _losses(out)
    assert len(losses) == 12 and losses[-1] < 0.7 * losses[0]
    manifest = read_manifest(path)
    assert manifest["kind"] == "vision" and "text" in manifest["ignored"]
    params, cfg = load_converted(path)
    assert _as_json(cfg) == _as_json(flamingo_config.vision)
    assert not os.path.exists(os.path.join(out, common.CHECKPOINTS))  # finished: no resumable state left
    # the trainer's loading path checks every shape against the Flamingo model's (the LM test runs a forward)
    _, merged = _plug(flamingo_config, vision=path)
    for a, b in zip(jax.tree.leaves(merged["vision"]), jax.tree.leaves(params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # a finished directory is returned as is
    assert pretrain.pretrain_vision(_stage("vision", flamingo_config.vision, 12), out, batches=iter(())) == path


def test_pretrain_lm_learns_resumes_and_plugs_in(tmp_path, flamingo_config):
    lm_cfg = flamingo_config.lm
    full = str(tmp_path / "full")
    pretrain.pretrain_lm(_stage("lm", lm_cfg, 10), full, batches=_text_batches())
    losses = _losses(full)
    assert losses[-1] < 0.5 * losses[0]

    # interrupted after 7 steps with a save every 5: the rerun resumes from step 5 (its data given from batch 5
    # on: the caller owns the position of `batches`), redoes steps 6-10 only and ends where `full` does
    part = str(tmp_path / "part")

    def interrupted():
        for i, b in enumerate(_text_batches()):
            if i == 7:
                raise KeyboardInterrupt
            yield b

    with pytest.raises(KeyboardInterrupt):
        pretrain.pretrain_lm(_stage("lm", lm_cfg, 10, save_every=5), part, batches=interrupted())
    assert os.listdir(os.path.join(part, common.CHECKPOINTS)) == ["5"] and not pretrain.is_done(part)
    path = pretrain.pretrain_lm(_stage("lm", lm_cfg, 10, save_every=5), part, batches=_text_batches(5))
    rows = _rows(part)
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6, 7, 6, 7, 8, 9, 10]  # not a restart from step 0
    np.testing.assert_allclose([r["loss"] for r in rows[7:]], losses[5:], rtol=1e-5)
    resumed, _ = load_converted(path)
    reference, cfg = load_converted(full)
    for a, b in zip(jax.tree.leaves(resumed), jax.tree.leaves(reference)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
    assert _as_json(cfg) == _as_json(lm_cfg)

    # plugged into Flamingo: at initialisation (tanh gates 0) Flamingo's logits are the pretrained LM's
    from flamingo_jax.models.lm import DecoderLM

    model, merged = _plug(flamingo_config, lm=path)
    toks = jnp.asarray(next(_text_batches())["tokens"][:2])
    lm_logits, _ = DecoderLM(lm_cfg).apply({"params": reference}, toks)
    logits = jax.jit(model.apply)({"params": merged}, toks, tiny.images(), jnp.ones((2, 3), bool))
    np.testing.assert_allclose(np.asarray(logits[..., :lm_cfg.vocab_size]), np.asarray(lm_logits), rtol=1e-4, atol=1e-4)


def test_default_path_depends_on_the_tower(flamingo_config):
    a = pretrain.default_path("/r", "vision", flamingo_config.vision)
    other = flamingo_config.vision.copy_and_resolve_references()
    other.width = 16
    assert a.startswith("/r/vision_vit_tiny_") and a != pretrain.default_path("/r", "vision", other)
    assert pretrain.default_path("/r", "lm", flamingo_config.lm).startswith("/r/lm_llama_2l_")
