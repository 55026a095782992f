"""Trainable/frozen partition and the optimizer: no state for frozen params, schedules, decay groups."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from flamingo_jax import optim

PARAMS = {
    "lm": {"embed": {"embedding": jnp.ones((4, 2))}, "layers_0": {"w": jnp.ones((2, 2))}},
    "xattn": {"layers_0": {"attn_gate": jnp.zeros(()), "w": jnp.ones((2, 3))}},
    "resampler": {"latents": jnp.ones((3, 2))},
    "new_tokens": {"embedding": jnp.ones((2, 2))},
}


def test_partition_and_merge_roundtrip():
    trainable, frozen = optim.partition(PARAMS, optim.DEFAULT_TRAINABLE)
    assert set(trainable) == {"xattn", "resampler", "new_tokens"} and set(frozen) == {"lm"}
    merged = optim.merge(trainable, frozen)
    assert jax.tree.structure(merged) == jax.tree.structure(PARAMS)
    trainable, frozen = optim.partition(PARAMS, (*optim.DEFAULT_TRAINABLE, "lm/layers_.*"))
    assert "layers_0" in trainable["lm"] and "embed" in frozen["lm"]
    with pytest.raises(ValueError, match="no parameter matches"):
        optim.partition(PARAMS, ("nothing/.*", ))


@pytest.mark.parametrize("fused", [True, False])
def test_frozen_params_have_no_optimizer_state(fused):
    trainable, frozen = optim.partition(PARAMS, optim.DEFAULT_TRAINABLE)
    c = optim.optimizer_config(lr_multipliers=("resampler/.*=0.1", ), fused=fused)
    tx, _ = optim.make_optimizer(c, trainable, 100)
    state = tx.init(trainable)
    n_trainable = sum(x.size for x in jax.tree.leaves(trainable))
    n_state = sum(x.size for x in jax.tree.leaves(state) if x.ndim > 0 or x.dtype != jnp.int32)
    # Adam's two moments per trainable value (plus scalar step counts); nothing for the 12 frozen values.
    assert n_trainable * 2 <= n_state <= n_trainable * 2 + 8


def test_warmup_then_constant_and_cosine():
    c = optim.optimizer_config(lr=1e-4, warmup_steps=10)
    s = optim.schedule(c, 100)
    np.testing.assert_allclose([s(0), s(5), s(10), s(50)], [0, 5e-5, 1e-4, 1e-4], rtol=1e-6)
    c = optim.optimizer_config(lr=1e-4, warmup_steps=10, schedule="cosine")
    s = optim.schedule(c, 110)
    np.testing.assert_allclose([s(10), s(60), s(110)], [1e-4, 5e-5, 0], atol=1e-9)


@pytest.mark.parametrize("fused", [True, False])
def test_weight_decay_skips_the_resampler_and_multipliers_scale_the_step(fused):
    trainable = {"resampler": {"w": jnp.ones(3)}, "xattn": {"w": jnp.ones(3)}, "lm": {"w": jnp.ones(3)}}
    c = optim.optimizer_config(lr=1.0, warmup_steps=0, weight_decay=0.5, clip_norm=0.0, lr_multipliers=("lm/.*=0.1", ),
                               fused=fused)
    tx, _ = optim.make_optimizer(c, trainable, 10)
    zero_grads = jax.tree.map(jnp.zeros_like, trainable)
    updates, _ = tx.update(zero_grads, tx.init(trainable), trainable)
    # With zero gradients only weight decay moves params: -lr * wd * w, with lr x0.1 for the LM group.
    np.testing.assert_allclose(updates["resampler"]["w"], 0.0)
    np.testing.assert_allclose(updates["xattn"]["w"], -0.5)
    np.testing.assert_allclose(updates["lm"]["w"], -0.05, rtol=1e-6)


@pytest.mark.parametrize("clip_norm", [0.0, 1.0])
def test_fused_adamw_equals_the_optax_chain(clip_norm):
    """fused_adamw (one elementwise pass per leaf) makes the same updates as optax.chain(clip_by_global_norm,
    multi_transform(adamw per lr group, masked decay)) over several steps with warmup, groups and clipping."""
    keys = iter(jax.random.split(jax.random.key(0), 64))
    params = {
        "resampler": {"w": jax.random.normal(next(keys), (5, 3))},
        "xattn": {"w": jax.random.normal(next(keys), (4, )), "gate": jnp.zeros(
            ())}, "lm": {"w": jax.random.normal(next(keys), (2, 2))}
    }
    kw = dict(lr=0.1, warmup_steps=2, weight_decay=0.3, clip_norm=clip_norm, lr_multipliers=("lm/.*=0.1", ))
    fused, _ = optim.make_optimizer(optim.optimizer_config(**kw, fused=True), params, 10)
    chain, _ = optim.make_optimizer(optim.optimizer_config(**kw, fused=False), params, 10)
    p_f, p_c = params, params
    s_f, s_c = fused.init(params), chain.init(params)
    for step in range(5):
        grads = jax.tree.map(lambda x: 3.0 * jax.random.normal(next(keys), x.shape), params)
        u_f, s_f = fused.update(grads, s_f, p_f)
        u_c, s_c = chain.update(grads, s_c, p_c)
        p_f, p_c = optax.apply_updates(p_f, u_f), optax.apply_updates(p_c, u_c)
        for a, b in zip(jax.tree.leaves(p_f), jax.tree.leaves(p_c)):
            np.testing.assert_allclose(a, b, rtol=2e-6, atol=2e-7, err_msg=f"step {step}")
    assert float(jnp.abs(p_f["xattn"]["w"] - params["xattn"]["w"]).max()) > 1e-2  # it did move
