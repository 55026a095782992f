"""The update: lambda-weighted accumulation over datasets, microbatches, round robin, non-finite steps."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from flamingo_jax import optim
from flamingo_jax.data.synthetic import SyntheticMixture, synthetic_batch
from flamingo_jax.train_step import cross_entropy, dataset_gradients, init_state, make_train_step
from tiny import IMAGE, KEY, VOCAB, init_params, set_gates, tiny_model_config, tokens_with_images

WEIGHTS = {"a": 1.0, "b": 0.2}


@pytest.fixture(scope="module")
def setup():
    config = tiny_model_config("gated", num_layers=2)
    rng = np.random.default_rng(0)
    kw = dict(frames=1, image_size=IMAGE, vocab_size=VOCAB, image_id=config.image_token_id,
              eoc_id=config.eoc_token_id)
    batches = {"a": synthetic_batch(rng, 4, 12, 2, **kw), "b": synthetic_batch(rng, 4, 8, 1, **kw)}
    batches = jax.tree.map(jnp.asarray, batches)
    b = batches["a"]
    model, params, _ = init_params(config, b["tokens"], b["images"], b["image_mask"], b["media_index"])
    params = set_gates(params, 0.3)  # so gradients reach every trainable param
    trainable, frozen = optim.partition(params, optim.DEFAULT_TRAINABLE)
    return model, trainable, frozen, batches


def _manual_grads(model, trainable, frozen, batch):
    def mean_loss(t):
        logits = model.apply({"params": optim.merge(t, frozen)}, batch["tokens"], batch["images"],
                             batch["image_mask"], batch["media_index"])
        s, n = cross_entropy(logits, batch["targets"], batch["loss_mask"])
        return s / n
    return jax.grad(mean_loss)(trainable)


def test_one_update_applies_the_weighted_sum_of_dataset_gradients(setup):
    model, trainable, frozen, batches = setup
    tx = optax.sgd(1.0)  # new params = params - applied gradient, so the gradient can be read back
    step = jax.jit(make_train_step(model, tx, optax.constant_schedule(1.0), WEIGHTS))
    state, metrics = step(init_state(trainable, tx, KEY), frozen, batches)
    applied = jax.tree.map(jnp.subtract, trainable, state["trainable"])
    ga = _manual_grads(model, trainable, frozen, batches["a"])
    gb = _manual_grads(model, trainable, frozen, batches["b"])
    expected = jax.tree.map(lambda x, y: WEIGHTS["a"] * x + WEIGHTS["b"] * y, ga, gb)
    for got, want in zip(jax.tree.leaves(applied), jax.tree.leaves(expected)):
        np.testing.assert_allclose(got, want, rtol=2e-4, atol=1e-6)
    assert int(state["step"]) == 1
    np.testing.assert_allclose(metrics["loss"], metrics["loss/a"] + 0.2 * metrics["loss/b"], rtol=1e-6)


def test_microbatches_give_the_full_batch_gradient(setup):
    model, trainable, frozen, batches = setup
    full = dataset_gradients(trainable, frozen, model, batches["a"], KEY, 1)
    micro = dataset_gradients(trainable, frozen, model, batches["a"], KEY, 2)
    np.testing.assert_allclose(full[1], micro[1], rtol=1e-5)
    assert float(full[2]) == float(micro[2])
    for x, y in zip(jax.tree.leaves(full[0]), jax.tree.leaves(micro[0])):
        np.testing.assert_allclose(x, y, rtol=2e-4, atol=1e-6)


def test_round_robin_makes_one_update_per_dataset_batch(setup):
    model, trainable, frozen, batches = setup
    tx = optax.sgd(1.0)
    step = make_train_step(model, tx, optax.constant_schedule(1.0), WEIGHTS)
    state = init_state(trainable, tx, KEY)
    for name in ("a", "b"):
        state, metrics = jax.jit(step)(state, frozen, {name: batches[name]})
        assert set(k for k in metrics if k.startswith("loss/")) == {f"loss/{name}"}
    assert int(state["step"]) == 2


def test_non_finite_updates_never_reach_the_params(setup):
    model, trainable, frozen, batches = setup
    tx = optax.adam(1e-3)
    step = jax.jit(make_train_step(model, tx, optax.constant_schedule(1e-3), WEIGHTS))
    bad = {**batches, "a": {**batches["a"], "images": batches["a"]["images"].at[0].set(jnp.nan)}}
    state0 = init_state(trainable, tx, KEY)
    state, metrics = step(state0, frozen, bad)
    assert not bool(metrics["finite"]) and int(state["nonfinite_run"]) == 1
    for x, y in zip(jax.tree.leaves(state["trainable"]), jax.tree.leaves(trainable)):
        np.testing.assert_array_equal(x, y)
    state, metrics = step(state, frozen, batches)
    assert bool(metrics["finite"]) and int(state["nonfinite_run"]) == 0 and int(state["nonfinite_total"]) == 1


def test_synthetic_round_robin_cycles_datasets_and_resumes():
    from tiny import tiny_train_config
    config = tiny_train_config(mode="round_robin")
    it = SyntheticMixture(config.data, {"m3w": 2, "align": 2}, vocab_size=VOCAB, image_id=VOCAB, eoc_id=VOCAB + 1)
    names = [list(next(it)) for _ in range(4)]
    assert names == [["m3w"], ["align"], ["m3w"], ["align"]]
    state = it.get_state()
    nxt = next(it)
    it.set_state(state)
    again = next(it)
    np.testing.assert_array_equal(nxt["m3w"]["tokens"], again["m3w"]["tokens"])
