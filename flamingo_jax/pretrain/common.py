"""What both pretraining stages share: their config, AdamW, the resumable jitted loop, and the converted output.

config fields (`pretrain_config`):
  kind          'vision' (CLIP-style contrastive) or 'lm' (next-token)
  model         the tower's config: a vision_config or an lm_config (exactly what config.model.<kind> holds)
  data          config.data (flamingo_jax.data.config); the stage reads datasets.clip or datasets.text
  dataset       'clip' | 'text'
  steps, batch_size (0 = the dataset's batch_size: the LM default, so an experiment sets its LM context and
                batch in data.datasets.text), seed
  lr, warmup_steps, weight_decay (on matrices only), b1, b2, clip_norm
  log_every, save_every (steps between resumable train-state saves; 0 = only at the end)
  text          vision only: the text tower (width, layers, heads, embed_dim, max_len)
  init_temperature  vision only: initial softmax temperature (CLIP: 0.07; learnt, 1/100 at the least)

Workdir layout: metrics.jsonl and TensorBoard event files (flamingo_jax.metrics_log), checkpoints/ (Orbax step
checkpoints of the train state and the data iterator's state, as the Flamingo trainer writes them; deleted once
the result is saved), and the result itself in flamingo_jax.convert's format (config.json +
params/), so `config.pretrained.<kind> = workdir` loads it in the trainer unchanged.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import time
from typing import Any, Callable, Iterator

import jax
import ml_collections
import numpy as np
import optax

from flamingo_jax.files import read_metrics
from flamingo_jax.progress import Progress

CHECKPOINTS = "checkpoints"  # the resumable step checkpoints (flamingo_jax.checkpoint), removed once the tower is saved


def pretrain_config(kind: str, model: ml_collections.ConfigDict, data: ml_collections.ConfigDict,
                    **overrides: Any) -> ml_collections.ConfigDict:
    """The config of one pretraining stage (module docstring); unknown overrides raise."""
    if kind not in ("vision", "lm"):
        raise ValueError(f"pretraining kind must be 'vision' or 'lm', got {kind!r}")
    c = ml_collections.ConfigDict(
        dict(
            kind=kind,
            model=model,
            data=data,
            dataset="clip" if kind == "vision" else "text",
            steps=400,
            batch_size=64 if kind == "vision" else 0,
            seed=0,
            lr=1e-3,
            warmup_steps=20,
            weight_decay=0.1 if kind == "vision" else 0.01,
            b1=0.9,
            b2=0.98 if kind == "vision" else 0.95,
            clip_norm=1.0,
            log_every=20,
            save_every=100,
            text=ml_collections.ConfigDict(dict(width=64, layers=2, heads=4, embed_dim=64, max_len=64)),
            init_temperature=0.07,
        ))
    for key, value in overrides.items():
        if key not in c:
            raise KeyError(f"unknown pretraining field {key!r}; known: {sorted(c)}")
        c[key] = value
    return c


def from_experiment(config: ml_collections.ConfigDict, kind: str, **overrides: Any) -> ml_collections.ConfigDict:
    """A stage config for the tower of a Flamingo experiment config (config.model.<kind>, config.data)."""
    overrides.setdefault("seed", int(config.get("seed", 0)))
    return pretrain_config(kind, config.model[kind], config.data, **overrides)


def as_stage_config(config: ml_collections.ConfigDict, kind: str) -> ml_collections.ConfigDict:
    """Accepts a stage config or a Flamingo experiment config."""
    if "kind" in config and "model" in config and "dataset" in config:
        if config.kind != kind:
            raise ValueError(f"this is a {config.kind!r} pretraining config, not {kind!r}")
        return config
    if "model" in config and kind in config.model and "data" in config:
        return from_experiment(config, kind)
    raise ValueError("pretraining needs a flamingo_jax.pretrain.pretrain_config or an experiment config with "
                     f"model.{kind} and data")


def default_path(root: str, kind: str, model: ml_collections.ConfigDict,
                 data: ml_collections.ConfigDict | None = None) -> str:
    """<root>/<kind>_<name>_<hash>: one directory per tower config (and world/vocabulary of the data), so a
    changed config never silently reuses another tower's weights."""
    h = hashlib.sha256(json.dumps(model.to_dict(), sort_keys=True, default=str).encode())
    if data is not None:
        h.update(
            json.dumps(dict(world=data.world.to_dict(), vocab=data.vocab.to_dict()), sort_keys=True,
                       default=str).encode())
    name = f"{model.kind}_{model.size}".replace("/", "-") if kind == "vision" else f"{model.family}_{model.num_layers}l"
    return os.path.join(root, f"{kind}_{name}_{h.hexdigest()[:8]}")


def is_done(workdir: str) -> bool:
    return os.path.isfile(os.path.join(workdir, "config.json"))


def make_optimizer(c: ml_collections.ConfigDict) -> optax.GradientTransformation:
    """AdamW with linear warmup then cosine decay to 0; weight decay on matrices only; global-norm clipping."""
    warm = max(int(c.warmup_steps), 1)
    sched = optax.warmup_cosine_decay_schedule(0.0, c.lr, warm, max(int(c.steps), warm + 1), 0.0)
    decay_mask = lambda params: jax.tree.map(lambda x: x.ndim >= 2, params)  # noqa: E731
    tx = optax.adamw(sched, b1=c.b1, b2=c.b2, weight_decay=c.weight_decay, mask=decay_mask)
    return optax.chain(optax.clip_by_global_norm(c.clip_norm), tx) if c.clip_norm else tx


def stage(config: ml_collections.ConfigDict, kind: str, workdir: str) -> tuple[ml_collections.ConfigDict, str]:
    """(a private copy of the stage config of `config` (as_stage_config), the absolute workdir)."""
    return copy.deepcopy(as_stage_config(config, kind)), os.path.abspath(workdir)


def stage_batches(c: ml_collections.ConfigDict, batches: Iterator[dict] | None) -> tuple[Any, Iterator[dict]]:
    """(the data iterator or None, the stage dataset's batches): `batches` when given (tests), else the mixture
    iterator's batches of c.dataset (the iterator is returned for its state and vocabulary)."""
    if batches is not None:
        return None, batches
    data_iter = make_iterator(c)
    return data_iter, (b[c.dataset] for b in data_iter)


def make_iterator(c: ml_collections.ConfigDict) -> Any:
    """The data engineer's mixture iterator over the stage's single dataset (batches keyed by its name)."""
    from flamingo_jax.data.mixture import make_mixture_iterator

    bs = int(c.batch_size) or int(c.data.datasets[c.dataset].batch_size)
    return make_mixture_iterator(c.data, {c.dataset: bs}, seed=int(c.seed), names=[c.dataset])


def run_loop(c: ml_collections.ConfigDict, workdir: str, init_params: dict, loss_fn: Callable, batches: Iterator[dict],
             *, data_iter: Any = None, name: str = "pretrain") -> dict:
    """Trains `init_params` for c.steps with AdamW and returns the final params (host numpy).

    loss_fn(params, batch) -> (loss, aux dict of scalars); batch: the numpy batch of the stage's dataset.
    Runs on the Flamingo trainer's parts, so a pretraining workdir behaves like a training one: the same train
    state (train_step.init_state: step, params as `trainable`, the optimizer state, rng, counters) saved as
    Orbax step checkpoints with the data iterator's state and checksums (flamingo_jax.checkpoint.Checkpoints,
    every c.save_every steps), the same logs (flamingo_jax.metrics_log: metrics.jsonl and TensorBoard) and the
    same SIGTERM / SIGINT handling (flamingo_jax.preemption: the step finishes, a checkpoint is saved, the run
    stops). A rerun resumes from the newest intact step checkpoint."""
    from flamingo_jax.checkpoint import Checkpoints
    from flamingo_jax.metrics_log import MetricsLog
    from flamingo_jax.preemption import Preemption
    from flamingo_jax.train_state import make_key
    from flamingo_jax.train_step import init_state

    os.makedirs(workdir, exist_ok=True)
    tx = make_optimizer(c)
    state = jax.jit(lambda p, r: init_state(p, tx, r))(init_params, make_key(int(c.seed)))
    ckpt = Checkpoints(
        workdir,
        ml_collections.ConfigDict(
            dict(checkpoint_every=int(c.save_every), checkpoint_keep=1, checkpoint_async=False, stage=c.to_dict())))
    restored = ckpt.restore(state)
    if restored is not None:
        state = restored.state
        if restored.data_state is not None and data_iter is not None:
            data_iter.set_state(restored.data_state)
        print(f"[{name}] resumed at step {restored.step}", flush=True)

    @jax.jit
    def step_fn(state, batch):
        (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["trainable"], batch)
        updates, opt_state = tx.update(grads, state["opt_state"], state["trainable"])
        params = optax.apply_updates(state["trainable"], updates)
        aux = dict(aux, loss=loss, grad_norm=optax.global_norm(grads))
        return dict(state, trainable=params, opt_state=opt_state, step=state["step"] + 1), aux

    def save(at: int) -> None:
        ckpt.save(at, state, data_iter.get_state() if data_iter is not None else None)
        ckpt.wait()

    log = MetricsLog(workdir, int(c.steps))
    preempt = Preemption()
    start = int(state["step"])
    tick = time.perf_counter()
    progress = Progress(f"[{name}] step", int(c.steps), start=start)  # at every log step and every 10 s
    try:
        for step in range(start, int(c.steps)):
            state, aux = step_fn(state, next(batches))
            done = step + 1
            progress.count()
            if done % c.log_every == 0 or done == c.steps:
                scalars = {k: float(v) for k, v in jax.device_get(aux).items()}
                now = time.perf_counter()
                scalars["steps_per_sec"] = c.log_every / max(now - tick, 1e-9)
                tick = now
                log.write(done, scalars)
                progress.show(loss=scalars["loss"],
                              **{k: v
                                 for k, v in scalars.items() if k not in ("loss", "steps_per_sec")})
            elif progress.due():
                progress.show(loss=float(aux["loss"]))
            if done < c.steps and (ckpt.due(done) or preempt.reached(done)):
                save(done)
                if preempt.flag:
                    raise SystemExit(f"[{name}] {preempt.signal_name}: saved step {done}; rerun to resume")
    finally:
        log.close()
        preempt.restore_handlers()
        ckpt.close()
    return jax.device_get(state["trainable"])


def finish(workdir: str, kind: str, params: dict, model_config: ml_collections.ConfigDict, source: dict,
           ignored: dict[str, str], notes: list[str]) -> str:
    """Saves the tower in flamingo_jax.convert's format and removes the resumable train state."""
    from flamingo_jax.convert.store import Converted, save_converted

    params = jax.tree.map(np.asarray, params)
    out = save_converted(workdir, Converted(kind, params, model_config, source=source, ignored=ignored, notes=notes))
    shutil.rmtree(os.path.join(workdir, CHECKPOINTS), ignore_errors=True)  # the tower is saved: no resume left
    return out


def last_metrics(workdir: str) -> dict:
    """The last logged step's record of a pretraining workdir ({} before the first log step)."""
    records = read_metrics(workdir)
    return records[-1] if records else {}
