"""The update: lambda-weighted losses over a mixture, microbatch accumulation, AdamW on trainable params.

One call of the step takes a dict of batches keyed by dataset. With the paper's accumulation every dataset
is present and ONE update applies sum_m lambda_m * grad_m; in round-robin mode the iterator yields one
dataset per step and the same function makes one update per dataset batch (ablation ii).

The objective (`loss.normalization`, make_train_step's `normalization`):

- 'sequence' (default): the paper's (Section 3.3, Equation 2) sum over datasets m of lambda_m times the
  expected negative log-likelihood of a sequence of D_m, i.e. per dataset the next-token cross-entropy summed
  over `loss_mask` within each sequence, then averaged over the sequences of the batch. The divisor is the
  batch's row count B: every row counts, a row without any loss token included (it adds 0 to the sum).
- 'token': per dataset the token-weighted mean over `loss_mask` (the summed loss divided by the dataset's
  token count): dataset m weighs lambda_m whatever its length, where under 'sequence' it also weighs in
  proportion to its loss tokens per sequence.

The two differ per dataset by the factor (loss tokens / B), so the loss and gradient scales differ: Adam
divides out a constant scale of the whole gradient, but not the change in the datasets' relative weights
(each scales by its own tokens per sequence) nor the global-norm clipping (optimizer.clip_norm), which a
per-sequence sum exceeds far more often; a learning rate tuned under one setting may need retuning under
the other.

Batches larger than memory split into `microbatches` (strided: every device keeps its rows) and run under
lax.scan; the summed loss and gradients are divided once, by B or by the token count of the whole dataset
batch, so the result equals the full batch's.

Metrics: `loss` is the lambda-weighted objective actually optimised (in nats per sequence under 'sequence',
nats per token under 'token'); per dataset `loss/<name>` is always the per-token mean NLL (nats / token,
comparable across settings and runs), `seq_loss/<name>` the per-sequence summed NLL and `tokens/<name>` the
number of loss tokens.

The health check (`max_update_ratio`): an update is applied only when the loss and the gradient are finite,
the proposed update and the params it would give are finite, and the update's global norm is at most
`max_update_ratio` x the current trainable params' global norm (floored at 1, so a zero-initialised set such
as the tanh gates alone can still move; 0 disables the ratio test). Anything else is skipped: the params and
the Adam moments stay as they were, `nonfinite_run` (the name kept for checkpoint compatibility: it counts
skipped updates of any cause) grows, and metrics["skipped"] says why (SKIP_* bits). The norm test catches the
step that is finite but destructive: with a learning rate of 1e9 the first such update multiplied the params'
norm by 4e9 while loss and gradient were still finite. AdamW's per-element step is about lr, so a healthy
update is ~lr*sqrt(n) against a params norm that grows with sqrt(n) too: update/params ratios of 1e-3..1e-2
are the usual range (the "update-to-weight ratio ~1e-3" rule of thumb, Karpathy, CS231n notes, "Neural
Networks Part 3"), and an update as large as all the params together (ratio 1, the default) is never part of
a healthy run. The proposed update is computed twice: once inside reductions only (its norms, fused by XLA
into one read of gradients, moments and params, no extra memory) and once in the branch that applies it in
place, so a skipped step still costs nothing in memory and the moments are never copied.

`lr_scale` (the step's optional fourth argument, a float32 scalar) multiplies the whole update: AdamW's update
is linear in the learning rate (weight decay included), so this is exactly the learning rate times lr_scale
(the trainer's rollback lowers it for a while).

A batch (per dataset): tokens, targets int32[B, L]; loss_mask float32[B, L]; media_index int32[B, L];
images float32[B, T, F, H, W, C]; image_mask bool[B, T].
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from flamingo_jax.optim import merge

Params = Any
Batch = Mapping[str, jax.Array]
MODEL_INPUTS = ("tokens", "images", "image_mask", "media_index")
NORMALIZATIONS = ("sequence", "token")
# metrics["skipped"]: why an update was not applied (bits; 0 = applied).
SKIP_NONFINITE_GRADS = 1  # the loss or the gradient is not finite
SKIP_NONFINITE_UPDATE = 2  # the proposed update, or the params it gives, is not finite
SKIP_UPDATE_TOO_LARGE = 4  # the update's norm exceeds max_update_ratio x the params' norm


def skip_reasons(bits: int, update_norm: float = float("nan"), ratio: float = float("nan"),
                 max_ratio: float = 0.0) -> str:
    """metrics["skipped"] in words (for the trainer's messages)."""
    out = []
    if bits & SKIP_NONFINITE_GRADS:
        out.append("the loss or the gradient was not finite")
    if bits & SKIP_NONFINITE_UPDATE:
        out.append("the update or the params it would give were not finite")
    if bits & SKIP_UPDATE_TOO_LARGE:
        out.append(f"the update's norm {update_norm:.3g} was {ratio:.3g} x the params' norm, above "
                   f"guard.max_update_ratio={max_ratio:g}")
    return "; ".join(out) or "applied"


def check_normalization(normalization: str) -> str:
    """`normalization` if it is one of NORMALIZATIONS, else a ValueError naming them."""
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"loss.normalization must be 'sequence' (the paper's per-sequence sum, Equation 2) or "
                         f"'token' (the per-token mean), not {normalization!r}")
    return normalization


def cross_entropy(logits: jax.Array, targets: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    """logits float[B, L, V], targets int32[B, L], mask float[B, L] -> (summed loss, token count)."""
    logits = logits.astype(jnp.float32)
    logz = jax.nn.logsumexp(logits, axis=-1)
    picked = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    mask = mask.astype(jnp.float32)
    return jnp.sum((logz - picked) * mask), jnp.sum(mask)


def summed_loss(trainable: Params, frozen: Params, model: nn.Module, batch: Batch,
                rng: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(summed token loss, token count) of one (micro)batch. `rng` feeds stochastic layers ('dropout')."""
    logits = model.apply({"params": merge(trainable, frozen)}, batch["tokens"], batch["images"], batch["image_mask"],
                         batch["media_index"], rngs={"dropout": rng})
    return cross_entropy(logits, batch["targets"], batch["loss_mask"])


class DatasetLoss(NamedTuple):
    """dataset_gradients' result for one dataset's batch."""

    grads: Params  # gradient of `loss`
    loss: jax.Array  # the dataset's objective: nll_sum / sequences ('sequence') or / max(tokens, 1) ('token')
    nll_sum: jax.Array  # the masked next-token NLL summed over the whole batch
    tokens: jax.Array  # the number of loss tokens (sum of loss_mask)
    sequences: int  # B, the batch's rows


def dataset_gradients(trainable: Params, frozen: Params, model: nn.Module, batch: Batch, rng: jax.Array,
                      microbatches: int = 1, normalization: str = "sequence") -> DatasetLoss:
    """The objective of one dataset's batch and its gradient (see the module docstring for `normalization`).

    'sequence' divides the summed NLL by the batch's row count B (every row, whatever its loss tokens),
    'token' by its token count; with microbatches the sums run over all of them before the one division."""
    check_normalization(normalization)
    grad_fn = jax.value_and_grad(summed_loss, has_aux=True)
    b = batch["tokens"].shape[0]
    if microbatches <= 1:
        (total, count), grads = grad_fn(trainable, frozen, model, batch, rng)
    else:
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
    denom = float(b) if normalization == "sequence" else jnp.maximum(count, 1.0)
    return DatasetLoss(jax.tree.map(lambda g: g / denom, grads), total / denom, total, count, b)


def init_state(trainable: Params, tx: optax.GradientTransformation, rng: jax.Array) -> dict:
    """The train state: step, trainable params, optimizer state, rng, and the skipped-update counters
    (`nonfinite_run`: skipped updates in a row, `nonfinite_total`: all of them; see the module docstring)."""
    return dict(step=jnp.zeros((), jnp.int32), trainable=trainable, opt_state=tx.init(trainable), rng=rng,
                nonfinite_run=jnp.zeros((), jnp.int32), nonfinite_total=jnp.zeros((), jnp.int32))


def make_train_step(
    model: nn.Module,
    tx: optax.GradientTransformation,
    schedule: optax.Schedule,
    weights: Mapping[str, float],
    microbatches: Mapping[str, int] | None = None,
    normalization: str = "sequence",
    max_update_ratio: float = 0.0,
) -> Callable[..., tuple[dict, dict]]:
    """step(state, frozen, batches[, lr_scale]) -> (new state, metrics). Batches: {dataset: batch}, any subset.

    Optimises sum_m weights[m] * (dataset m's objective under `normalization`: 'sequence', the paper's
    Equation 2, or 'token'); metrics["loss"] is that weighted objective, metrics["loss/<name>"] the per-token
    mean NLL whatever the normalization, metrics["seq_loss/<name>"] the per-sequence summed NLL. The update
    is applied only when healthy (module docstring: finite, and its norm at most max_update_ratio x the params'
    norm; 0 = no ratio test); metrics["skipped"] holds the SKIP_* bits, metrics["update_norm"] and
    metrics["update_ratio"] the proposed update's norm and its ratio to the params' norm (floored at 1)."""
    microbatches = dict(microbatches or {})
    check_normalization(normalization)
    max_update_ratio = float(max_update_ratio or 0.0)

    def step(state: dict, frozen: Params, batches: Mapping[str, Batch],
             lr_scale: jax.Array | None = None) -> tuple[dict, dict]:
        metrics = {}
        grads, loss = None, jnp.zeros(())
        step_rng = jax.random.fold_in(state["rng"], state["step"])
        for i, name in enumerate(sorted(batches)):
            d = dataset_gradients(state["trainable"], frozen, model, batches[name], jax.random.fold_in(step_rng, i),
                                  microbatches.get(name, 1), normalization)
            w = float(weights[name])
            grads = jax.tree.map(lambda x: w * x, d.grads) if grads is None else jax.tree.map(
                lambda a, x: a + w * x, grads, d.grads)
            loss = loss + w * d.loss
            metrics[f"loss/{name}"] = d.nll_sum / jnp.maximum(d.tokens, 1.0)
            metrics[f"seq_loss/{name}"] = d.nll_sum / d.sequences
            metrics[f"tokens/{name}"] = d.tokens
        grad_norm = optax.global_norm(grads)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)

        def propose(trainable, opt_state):
            updates, opt_state = tx.update(grads, opt_state, trainable)
            if lr_scale is not None:
                updates = jax.tree.map(lambda u: u * jnp.asarray(lr_scale, u.dtype), updates)
            return updates, opt_state

        def apply(operands):
            trainable, opt_state = operands
            updates, opt_state = propose(trainable, opt_state)
            return optax.apply_updates(trainable, updates), opt_state

        # The health check reads the proposed update through reductions only (no update tree is kept); the
        # branch below recomputes it in place. Only a healthy step touches the params and the Adam moments
        # (a branch, not a select over every moment: that would read and write the whole state each step).
        proposed, _ = propose(state["trainable"], state["opt_state"])
        update_norm = optax.global_norm(proposed)
        new_norm = optax.global_norm(optax.apply_updates(state["trainable"], proposed))
        params_norm = optax.global_norm(state["trainable"])
        ratio = update_norm / jnp.maximum(params_norm, 1.0)
        update_finite = jnp.isfinite(update_norm) & jnp.isfinite(new_norm)
        too_large = (ratio > max_update_ratio) if max_update_ratio > 0 else jnp.zeros((), bool)
        skipped = (jnp.where(finite, 0, SKIP_NONFINITE_GRADS)
                   | jnp.where(finite & ~update_finite, SKIP_NONFINITE_UPDATE, 0)
                   | jnp.where(update_finite & too_large, SKIP_UPDATE_TOO_LARGE, 0)).astype(jnp.int32)
        ok = skipped == 0
        trainable, opt_state = jax.lax.cond(ok, apply, lambda operands: operands,
                                            (state["trainable"], state["opt_state"]))
        new_state = dict(
            step=state["step"] + 1,
            trainable=trainable,
            opt_state=opt_state,
            rng=state["rng"],
            nonfinite_run=jnp.where(ok, 0, state["nonfinite_run"] + 1),
            nonfinite_total=state["nonfinite_total"] + (~ok).astype(jnp.int32),
        )
        # No param norm metric here: the trainer computes the updated params' norm when it logs
        # (Trainer.param_norm); params_norm above is the norm before the update.
        lr = schedule(state["step"])
        metrics.update(loss=loss, grad_norm=grad_norm, learning_rate=lr if lr_scale is None else lr * lr_scale,
                       finite=finite, skipped=skipped, skipped_run=new_state["nonfinite_run"], update_norm=update_norm,
                       update_ratio=ratio, nonfinite_total=new_state["nonfinite_total"])
        return new_state, metrics

    return step
