"""The update: lambda-weighted losses over a mixture, microbatch accumulation, AdamW on trainable params.

One call of the step takes a dict of batches keyed by dataset. With the paper's accumulation every dataset
is present and ONE update applies sum_m lambda_m * grad_m; in round-robin mode the iterator yields one
dataset per step and the same function makes one update per dataset batch (ablation ii).

Per dataset the loss is the token-weighted mean of the next-token cross-entropy over `loss_mask`. Batches
larger than memory split into `microbatches` (strided: every device keeps its rows) and run under lax.scan;
the summed loss and gradients are divided by the dataset's token count once (so the result equals the full
batch's).

Non-finite losses or gradients never reach the params: the update is dropped, counted, and the caller stops
after too many in a row.

A batch (per dataset): tokens, targets int32[B, L]; loss_mask float32[B, L]; media_index int32[B, L];
images float32[B, T, F, H, W, C]; image_mask bool[B, T].
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from flamingo_jax.optim import merge

Params = Any
Batch = Mapping[str, jax.Array]
MODEL_INPUTS = ("tokens", "images", "image_mask", "media_index")


def cross_entropy(logits: jax.Array, targets: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    """logits float[B, L, V], targets int32[B, L], mask float[B, L] -> (summed loss, token count)."""
    logits = logits.astype(jnp.float32)
    logz = jax.nn.logsumexp(logits, axis=-1)
    picked = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    mask = mask.astype(jnp.float32)
    return jnp.sum((logz - picked) * mask), jnp.sum(mask)


def summed_loss(trainable: Params, frozen: Params, model: nn.Module, batch: Batch, rng: jax.Array
                ) -> tuple[jax.Array, jax.Array]:
    """(summed token loss, token count) of one (micro)batch. `rng` feeds stochastic layers ('dropout')."""
    logits = model.apply({"params": merge(trainable, frozen)}, batch["tokens"], batch["images"],
                         batch["image_mask"], batch["media_index"], rngs={"dropout": rng})
    return cross_entropy(logits, batch["targets"], batch["loss_mask"])


def dataset_gradients(trainable: Params, frozen: Params, model: nn.Module, batch: Batch, rng: jax.Array,
                      microbatches: int = 1) -> tuple[Params, jax.Array, jax.Array]:
    """(gradient of the mean token loss, mean token loss, token count) for one dataset's batch."""
    grad_fn = jax.value_and_grad(summed_loss, has_aux=True)
    if microbatches <= 1:
        (total, count), grads = grad_fn(trainable, frozen, model, batch, rng)
    else:
        b = batch["tokens"].shape[0]
        if b % microbatches:
            raise ValueError(f"batch {b} is not divisible into {microbatches} microbatches")
        # Microbatch i takes rows i, i + m, i + 2m, ...: the batch axis is sharded in contiguous blocks over
        # (data, fsdp), so every device keeps its own rows and each microbatch stays spread over all devices
        # (a contiguous split would put each microbatch on a fraction of the devices and reshard the batch).
        micro = jax.tree.map(lambda x: jnp.swapaxes(x.reshape(b // microbatches, microbatches, *x.shape[1:]), 0, 1),
                             dict(batch))

        def body(carry, xs):
            g_acc, s_acc, n_acc = carry
            mb, i = xs
            (s, n), g = grad_fn(trainable, frozen, model, mb, jax.random.fold_in(rng, i))
            return (jax.tree.map(jnp.add, g_acc, g), s_acc + s, n_acc + n), None

        zeros = jax.tree.map(jnp.zeros_like, trainable)
        (grads, total, count), _ = jax.lax.scan(body, (zeros, jnp.zeros(()), jnp.zeros(())),
                                              (micro, jnp.arange(microbatches)))
    denom = jnp.maximum(count, 1.0)
    return jax.tree.map(lambda g: g / denom, grads), total / denom, count


def init_state(trainable: Params, tx: optax.GradientTransformation, rng: jax.Array) -> dict:
    """The train state: step, trainable params, optimizer state, rng, and the non-finite counters."""
    return dict(step=jnp.zeros((), jnp.int32), trainable=trainable, opt_state=tx.init(trainable), rng=rng,
                nonfinite_run=jnp.zeros((), jnp.int32), nonfinite_total=jnp.zeros((), jnp.int32))


def make_train_step(model: nn.Module, tx: optax.GradientTransformation, schedule: optax.Schedule,
                    weights: Mapping[str, float], microbatches: Mapping[str, int] | None = None
                    ) -> Callable[[dict, Params, Mapping[str, Batch]], tuple[dict, dict]]:
    """step(state, frozen, batches) -> (new state, metrics). Batches: {dataset: batch}, any subset."""
    microbatches = dict(microbatches or {})

    def step(state: dict, frozen: Params, batches: Mapping[str, Batch]) -> tuple[dict, dict]:
        metrics = {}
        grads, loss = None, jnp.zeros(())
        step_rng = jax.random.fold_in(state["rng"], state["step"])
        for i, name in enumerate(sorted(batches)):
            g, l, n = dataset_gradients(state["trainable"], frozen, model, batches[name],
                                        jax.random.fold_in(step_rng, i), microbatches.get(name, 1))
            w = float(weights[name])
            grads = jax.tree.map(lambda x: w * x, g) if grads is None else jax.tree.map(
                lambda a, x: a + w * x, grads, g)
            loss = loss + w * l
            metrics[f"loss/{name}"] = l
            metrics[f"tokens/{name}"] = n
        grad_norm = optax.global_norm(grads)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)

        def apply(operands):
            trainable, opt_state = operands
            updates, opt_state = tx.update(grads, opt_state, trainable)
            return optax.apply_updates(trainable, updates), opt_state

        # Only a finite step touches the params and the Adam moments; a skipped one leaves them as they are
        # (a branch, not a select over every moment: that would read and write the whole state each step).
        trainable, opt_state = jax.lax.cond(finite, apply, lambda operands: operands,
                                            (state["trainable"], state["opt_state"]))
        new_state = dict(
            step=state["step"] + 1,
            trainable=trainable,
            opt_state=opt_state,
            rng=state["rng"],
            nonfinite_run=jnp.where(finite, 0, state["nonfinite_run"] + 1),
            nonfinite_total=state["nonfinite_total"] + (~finite).astype(jnp.int32),
        )
        # No param norm here: it reads every trainable param once more per step; the trainer computes it when it
        # logs (Trainer.param_norm).
        metrics.update(loss=loss, grad_norm=grad_norm, learning_rate=schedule(state["step"]), finite=finite,
                       nonfinite_total=new_state["nonfinite_total"])
        return new_state, metrics

    return step
