"""Several seeds of one experiment trained as ONE program: the train step vmapped over a leading seed axis.

    from flamingo_jax.seed_batch import train_seeds
    train_seeds(config, ["DIR/seed0", "DIR/seed1", "DIR/seed2"], seeds=[0, 1, 2])

Seeds of one experiment share the architecture and, with config.pretrained towers, the frozen weights; they
differ only in their trainable state and their data. Here the N runs' train states (trainable params, AdamW
state, rng, step and non-finite counters) are stacked on a leading axis, their N batches too, and
jax.vmap(step) is jitted once: one compiled step (and one dispatch per update) serves N runs, and XLA:CPU
works on N-times-larger ops, whose fixed costs dominate at world sizes (benchmarks/seed_batch.py).

Seed k batched is seed k alone: its config is `configs.seeded(config, k)` (config.seed and config.data.seed
shifted by k), its state comes from `train_state.initial_state` of that config, its data from
`train.make_data_iterator` of that config, and the update is `train.make_step`'s, vmapped (tests/
test_seed_batch.py: every trainable leaf within 1e-5 after a few steps, the same logged losses).

Frozen params: the subtrees loaded from config.pretrained are loaded once and shared by every seed (vmap
in_axes None); frozen subtrees that a run initialises from its seed (no pretrained path: a random frozen
tower) differ per seed, so they are stacked like the train state (N copies in memory).

Each seed writes its own workdir in the layout of a single run (flamingo_jax.train): metrics.jsonl and
TensorBoard events, checkpoints/<step> (its own slice of the state, its own data-iterator state and config),
frozen/. Evaluation, export and `ablate`'s readers read them unchanged. In metrics.jsonl, `steps_per_sec` is
the batched program's rate (each seed advanced that many steps per second, sharing the machine with the
others) and `seed_batch` is N.

Resume: every seed restores its newest intact checkpoint; if they differ (e.g. a run killed while the N
asynchronous saves were in flight), all seeds go back to the newest step they all hold (or start afresh if
one has none). That is safe because a run is deterministic: a seed's newer checkpoints stay in place and are
re-reached by the same trajectory (a save of an existing step is skipped; metrics.jsonl gets the steps again,
and readers take the later line). Checkpoints are always saved for every seed at the same steps (the cadence
of the first seed's config, which all share).

Not batchable (SeedBatchError, raised before any work; `ablate` then runs the seeds one by one): configs that
differ in anything but config.seed and config.data.seed, and data.mode='sample' (each seed would draw a
different dataset per step).
"""

from __future__ import annotations

import copy
import os
import time
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from jax.sharding import NamedSharding, PartitionSpec as P

from flamingo_jax import checkpoint, configs, guard, sharding
from flamingo_jax.metrics_log import MetricsLog
from flamingo_jax.preemption import Preemption
from flamingo_jax.progress import Progress
from flamingo_jax.train import MODEL_INPUTS, TrainingError, make_data_iterator, make_step, mesh_and_model
from flamingo_jax.train_state import initial_state


class SeedBatchError(ValueError):
    """Configs that cannot train as one batched program."""


# ---------------------------------------------------------------------------------------------- configs


def seed_config(config: ml_collections.ConfigDict, seed: int) -> ml_collections.ConfigDict:
    """The config of seed index `seed` (flamingo_jax.configs.seeded: model init and data order both shift)."""
    return configs.seeded(config, seed)


def _without_seeds(config: ml_collections.ConfigDict) -> dict:
    d = copy.deepcopy(config.to_dict())
    d.pop("seed", None)
    d.get("data", {}).pop("seed", None)
    return d


def check_batchable(configs: Sequence[ml_collections.ConfigDict]) -> None:
    """SeedBatchError unless `configs` differ only in config.seed and config.data.seed and their data
    yields the same datasets at every step."""
    if not configs:
        raise SeedBatchError("no configs to train")
    first = _without_seeds(configs[0])
    for i, c in enumerate(configs[1:], 1):
        if _without_seeds(c) != first:
            diff = sorted(_diff_paths(first, _without_seeds(c)))[:4]
            raise SeedBatchError(f"config {i} differs from config 0 in more than its seeds (e.g. {diff}): only "
                                 f"seeds of one experiment can share a program")
    if configs[0].data.get("mode", "accumulate") == "sample":
        raise SeedBatchError("data.mode='sample' draws each step's dataset from the seed: seeds would need "
                             "different steps")


def _diff_paths(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in set(a) | set(b):
            out += _diff_paths(a.get(k), b.get(k), f"{prefix}.{k}" if prefix else str(k))
        return out
    return [] if a == b else [prefix]


# ---------------------------------------------------------------------------------------------- stacking


def _leading(s: Any) -> Any:
    """The sharding of a stacked leaf: the per-seed sharding with an unsharded seed axis in front."""
    if isinstance(s, NamedSharding):
        return NamedSharding(s.mesh, P(None, *s.spec))
    return s


def stacked_batches(batches: Sequence[dict], mesh: jax.sharding.Mesh) -> dict:
    """N process-local {dataset: batch} -> one global {dataset: batch} with a leading seed axis, each batch
    sharded over (data, fsdp) on its own batch axis (train.to_global's layout behind the seed axis)."""
    names = sorted(batches[0])
    for i, b in enumerate(batches[1:], 1):
        if sorted(b) != names:
            raise SeedBatchError(f"seed {i}'s data yields datasets {sorted(b)} where seed 0's yields {names}")

    def one(xs):
        x = np.stack([np.asarray(v) for v in xs])
        spec = sharding.batch_sharding(mesh, x.ndim - 1).spec
        return jax.make_array_from_process_local_data(NamedSharding(mesh, P(None, *spec)), x)

    return {n: {k: one([b[n][k] for b in batches]) for k in (*MODEL_INPUTS, "targets", "loss_mask")} for n in names}


class SeedBatch:
    """N runs' train states stacked on a leading axis and the vmapped, jitted step that updates them all.

    state: the stacked train state; shared: frozen subtrees every seed uses (pretrained); seeded: the stacked
    frozen subtrees each seed initialised itself (empty with pretrained towers)."""

    def __init__(self, mesh: jax.sharding.Mesh, step, states: Sequence[dict], shared: dict, seeded: Sequence[dict]):
        self.mesh, self.n = mesh, len(states)
        self.state_sh = jax.tree.map(lambda x: x.sharding, states[0])
        stacked_sh = jax.tree.map(_leading, self.state_sh)
        seeded_sh = jax.tree.map(lambda x: _leading(x.sharding), seeded[0])
        shared_sh = jax.tree.map(lambda x: x.sharding, shared)
        stack = lambda *trees: jax.tree.map(lambda *xs: jnp.stack(xs), *trees)  # noqa: E731
        self.state = jax.jit(stack, out_shardings=stacked_sh)(*states)
        self.seeded = jax.jit(stack, out_shardings=seeded_sh)(*seeded) if seeded[0] else {}
        self.shared = shared

        def batched(state, shared, seeded, batches):
            return jax.vmap(lambda s, f, b: step(s, {**shared, **f}, b))(state, seeded, batches)

        self.step_fn = jax.jit(batched, in_shardings=(stacked_sh, shared_sh, seeded_sh if seeded[0] else None, None),
                               out_shardings=(stacked_sh, sharding.replicated(mesh)), donate_argnums=0)
        n = self.n
        self._unstack = jax.jit(lambda s: [jax.tree.map(lambda x: x[i], s) for i in range(n)],
                                out_shardings=[self.state_sh] * n)
        self._norms = jax.jit(jax.vmap(optax.global_norm), out_shardings=sharding.replicated(mesh))
        self._compiled: dict = {}

    def train_step(self, batches: Sequence[dict]) -> dict:
        """One update of every seed from its process-local numpy batches; metrics with a leading seed axis."""
        batches = stacked_batches(batches, self.mesh)
        self.state, metrics = self.compiled_step(batches)(self.state, self.shared, self.seeded, batches)
        return metrics

    def compiled_step(self, batches: dict):
        """The step compiled for this set of datasets (as train.Trainer.compiled_step, barrier included)."""
        key = tuple(sorted(batches))
        if key not in self._compiled:
            self._compiled[key] = self.step_fn.lower(self.state, self.shared, self.seeded, batches).compile()
            if jax.process_count() > 1:
                from jax._src import distributed

                distributed.global_state.client.wait_at_barrier(f"flamingo_jax_seed_batch_compiled_{'_'.join(key)}",
                                                                timeout_in_ms=3_600_000)
        return self._compiled[key]

    def states(self) -> list[dict]:
        """Every seed's own train state (its slice, in a single run's shardings)."""
        return self._unstack(self.state)

    def param_norms(self) -> np.ndarray:
        return np.asarray(jax.device_get(self._norms(self.state["trainable"])))


# ---------------------------------------------------------------------------------------------- training


def train_seeds(config: ml_collections.ConfigDict, workdirs: Sequence[str], seeds: Sequence[int]) -> list[dict]:
    """Trains seed `seeds[i]` of `config` (configs.seeded) into workdirs[i], all in one batched program;
    returns every seed's last logged scalars (see train_configs)."""
    if len(workdirs) != len(seeds):
        raise ValueError(f"{len(seeds)} seeds for {len(workdirs)} workdirs")
    return train_configs([seed_config(config, s) for s in seeds], workdirs)


def train_configs(configs: Sequence[ml_collections.ConfigDict], workdirs: Sequence[str]) -> list[dict]:
    """Trains configs[i] (seeds of one experiment, check_batchable) into workdirs[i] as one program, resuming
    from their checkpoints (module docstring); returns each run's last logged scalars, as train.train does
    (SIGTERM / SIGINT: every seed saves the same step and the scalars hold `preempted_at_step`)."""
    if len(configs) != len(workdirs):
        raise ValueError(f"{len(configs)} configs for {len(workdirs)} workdirs")
    if len({os.path.abspath(w) for w in workdirs}) != len(workdirs):
        raise ValueError(f"workdirs must differ: {list(workdirs)}")
    check_batchable(configs)
    for w in workdirs:
        os.makedirs(w, exist_ok=True)
    preempt = Preemption()
    try:
        return _train(list(configs), list(workdirs), preempt)
    finally:
        preempt.restore_handlers()


def _restore(ckpts: list[checkpoint.Checkpoints], targets: list[dict]) -> tuple[int, list | None]:
    """(step, [Restored per seed]) of the newest step every seed holds intact, or (0, None): start afresh."""
    newest = [c.restore(t) for c, t in zip(ckpts, targets)]  # damaged ones are moved aside here
    if any(r is None for r in newest):
        if any(r is not None for r in newest):
            logging.warning("seed batch: %s hold no checkpoint: every seed starts afresh",
                            [c.workdir for c, r in zip(ckpts, newest) if r is None])
        return 0, None
    steps = [r.step for r in newest]
    if len(set(steps)) == 1:
        return steps[0], newest
    common = set.intersection(*(set(c.steps()) for c in ckpts))
    for s in sorted((s for s in common if s <= min(steps)), reverse=True):
        try:
            out = [r if r.step == s else c.restore(t, step=s) for c, t, r in zip(ckpts, targets, newest)]
        except checkpoint.CheckpointError as e:
            logging.warning("seed batch: step %d is not intact in every seed (%s); trying an older one", s, e)
            continue
        logging.warning("seed batch: the seeds' newest checkpoints are at steps %s; all resume from step %d", steps, s)
        return s, out
    logging.warning("seed batch: no step is held by every seed (newest %s): every seed starts afresh", steps)
    return 0, None


def _train(configs: list, workdirs: list[str], preempt: Preemption) -> list[dict]:
    base, n = configs[0], len(configs)
    mesh, model = mesh_and_model(base)
    inits, pretrained = [], None
    for c in configs:
        init = initial_state(c, model, mesh, pretrained)
        pretrained = init.pretrained  # loaded once, the same arrays for every seed
        inits.append(init)
    shared_names = sorted(k for k in inits[0].frozen if k in pretrained)
    datas = [make_data_iterator(c, jax.process_index(), jax.process_count()) for c in configs]
    ckpts = [checkpoint.Checkpoints(w, c, mesh) for w, c in zip(workdirs, configs)]
    frozens = []
    for w, c, ckpt, init in zip(workdirs, configs, ckpts, inits):
        frozen, ckpt.frozen_manifest = checkpoint.prepare_frozen(w, c, init.frozen)
        frozens.append(frozen)
    start, restored = _restore(ckpts, [i.state for i in inits])
    states = [i.state for i in inits] if restored is None else [r.state for r in restored]
    if restored is not None:
        for d, r in zip(datas, restored):
            d.set_state(r.data_state)
        logging.info("seed batch: resumed %d seeds from step %d", n, start)
    step = make_step(base, model, inits[0].tx, inits[0].schedule)
    shared = {k: frozens[0][k] for k in shared_names}
    seeded = [{k: v for k, v in f.items() if k not in shared_names} for f in frozens]
    batch = SeedBatch(mesh, step, states, shared, seeded)
    del inits, states, restored, frozens, seeded
    logs = [MetricsLog(w, c.total_steps) for w, c in zip(workdirs, configs)]
    primary = jax.process_index() == 0
    total = int(base.total_steps)
    # As train's: one stdout line at every log step and at least every 10 s (every seed's loss on it).
    progress = Progress(f"[train x{n} seeds] step", total, start=start, enabled=bool(base.get("progress", True)) and
                        primary)
    last: list[dict] = [{} for _ in range(n)]
    tick, tick_step = time.perf_counter(), start
    saved = start if start else -1

    def save(at: int) -> None:
        for ckpt, s, d in zip(ckpts, batch.states(), datas):
            ckpt.save(at, s, d.get_state())

    try:
        for i in range(start, total):
            if preempt.flag and saved == i:
                break
            metrics = batch.train_step([next(d) for d in datas])
            progress.count()
            if (i + 1) % base.log_every == 0 or i + 1 == total:
                host = jax.device_get(metrics)
                norms = batch.param_norms()
                now = time.perf_counter()
                rate = (i + 1 - tick_step) / (now - tick)
                tick, tick_step = now, i + 1
                for k in range(n):
                    scalars = {name: float(v[k]) for name, v in host.items()}
                    scalars.update(param_norm=float(norms[k]), steps_per_sec=rate, seed_batch=float(n))
                    logs[k].write(i + 1, scalars)
                    last[k] = scalars
                progress.show(loss=" ".join(f"{s['loss']:.4g}" for s in last))
                runs = np.asarray(jax.device_get(batch.state["nonfinite_run"]))
                bad = [k for k in range(n) if runs[k] >= guard.resolve(base).max_bad_steps]
                if bad:
                    raise TrainingError(
                        f"{int(runs[bad[0]])} non-finite steps in a row at step {i + 1} in "
                        f"{[workdirs[k] for k in bad]} (none reached the params): lower optimizer.lr or check "
                        f"the data")
            elif progress.due():
                progress.show(loss=" ".join(f"{float(x):.4g}" for x in jax.device_get(metrics["loss"])))
            if preempt.reached(i + 1):
                save(i + 1)
                saved = i + 1
                break
            if ckpts[0].due(i + 1) or i + 1 == total:
                save(i + 1)
                saved = i + 1
        if preempt.flag:
            for ckpt in ckpts:
                ckpt.wait()
            message = (f"{preempt.signal_name}: saved the checkpoints of step {saved} in {n} workdirs "
                       f"({workdirs[0]}, ...); run the same command to resume")
            logging.warning(message)
            if primary:
                print(message, flush=True)
            last = [{**s, "preempted_at_step": float(saved)} for s in last]
    finally:
        for ckpt in ckpts:
            ckpt.close()
        for log in logs:
            log.close()
    return last
