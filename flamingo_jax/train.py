"""The trainer: python -m flamingo_jax.train --config experiments/X.py[:arg] --workdir DIR [--config.a.b=v]

One trainer for every experiment; ablations are config changes. The same code runs the tiny config on a
laptop CPU and paper-size configs on a pod: params are initialised from shapes straight into their
shardings (jax.eval_shape -> shardings -> jit(init, out_shardings)), the step is jitted with explicit
shardings and the train state is donated.

Multi-host (flamingo_jax.cluster): under SLURM (srun), Open MPI (mpirun), on Cloud TPU pod slices and on
Kubernetes run the same command in every process with no flags: JAX's own cluster detection finds the
coordinator, the process count and the index. Elsewhere give --coordinator_address, --num_processes and
--process_id (or JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID); --nocluster_detection keeps a
detected cluster's processes apart. A process that dies makes the others exit non-zero within
--heartbeat_timeout seconds (plus the coordination service's polling). Only process 0 writes logs.
Logs: TensorBoard event files in DIR (tensorboardX) and DIR/metrics.jsonl, one JSON object per log step
(a resumed run appends, so a step may appear twice: the later line is the one of the surviving run).
Checkpoints (flamingo_jax.checkpoint): DIR/checkpoints/<step>, DIR/frozen; a run whose DIR holds checkpoints
resumes from the newest intact one, on the current config's mesh. SIGTERM / SIGINT: finish the step, save, exit 0.
"""

from __future__ import annotations

import functools
import json
import os
import time
from dataclasses import dataclass
from typing import Any, Iterator

import flax.linen as nn
import jax
import ml_collections
import numpy as np
import optax
from absl import app, flags, logging
from ml_collections import config_flags

from flamingo_jax import checkpoint, cluster, guard as guard_lib, models, sharding
from flamingo_jax.metrics_log import MetricsLog
from flamingo_jax.preemption import Preemption
from flamingo_jax.progress import Progress
from flamingo_jax.run_checks import check_config, check_vocabulary
from flamingo_jax.train_step import MODEL_INPUTS, check_normalization, make_train_step
from flamingo_jax.train_state import initial_state


def define_flags() -> dict:
    """The CLI's flags, defined only when run as a program (importing the trainer defines none, so other
    modules' CLIs and tests can import it)."""
    return dict(
        config=config_flags.DEFINE_config_file("config", None, "experiment config file[:arg]", lock_config=True),
        workdir=flags.DEFINE_string("workdir", None, "where logs (and checkpoints) go"),
        coordinator=flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-host)"),
        num_processes=flags.DEFINE_integer("num_processes", None, "number of processes (multi-host)"),
        process_id=flags.DEFINE_integer("process_id", None, "this process's index (multi-host)"),
        cluster_detection=flags.DEFINE_bool(
            "cluster_detection", True, "start jax.distributed by itself in a "
            "SLURM / Open MPI / Cloud TPU / Kubernetes job (flamingo_jax.cluster)"),
        heartbeat_timeout=flags.DEFINE_integer(
            "heartbeat_timeout", cluster.HEARTBEAT_TIMEOUT_S,
            "seconds without heartbeats after which a process counts as dead "
            "and the others stop (multi-host)"),
    )


class TrainingError(RuntimeError):
    """A run that cannot go on (e.g. too many non-finite steps in a row)."""


def make_data_iterator(config: ml_collections.ConfigDict, process_index: int, process_count: int) -> Iterator:
    """The mixture iterator of config.data, yielding this process's share of each global batch."""
    local = {}
    for name in config.data.mixture:
        global_batch = config.data.datasets[name].batch_size
        if global_batch % process_count:
            raise sharding.MeshError(f"dataset {name!r}: batch {global_batch} does not split over "
                                     f"{process_count} processes")
        local[name] = global_batch // process_count
    if config.data.source == "synthetic":
        from flamingo_jax.data.synthetic import SyntheticMixture

        m = config.model
        return SyntheticMixture(config.data, local, vocab_size=m.lm.vocab_size, image_id=m.image_token_id,
                                eoc_id=m.eoc_token_id, seed=config.data.seed, process_index=process_index,
                                process_count=process_count)
    if config.data.source == "seqio":
        from flamingo_jax.data.seqio_source import make_seqio_iterator

        data = make_seqio_iterator(config.data, local, process_index=process_index, process_count=process_count)
        check_vocabulary(config, data)
        return data
    from flamingo_jax.data.mixture import make_mixture_iterator

    data = make_mixture_iterator(config.data, local, process_index=process_index, process_count=process_count)
    check_vocabulary(config, data)
    return data


def to_global(batches: dict, mesh: jax.sharding.Mesh) -> dict:
    """Process-local numpy batches -> global jax.Arrays sharded over (data, fsdp)."""

    def one(x):
        x = np.asarray(x)
        return jax.make_array_from_process_local_data(sharding.batch_sharding(mesh, x.ndim), x)

    return {name: {k: one(b[k]) for k in (*MODEL_INPUTS, "targets", "loss_mask")} for name, b in batches.items()}


def mesh_and_model(config: ml_collections.ConfigDict) -> tuple[jax.sharding.Mesh, nn.Module]:
    """The run's mesh and model, after the config checks every run makes (batches divide over the mesh,
    the data's image size is the model's, loss.normalization is known)."""
    check_normalization(config.loss.normalization)  # before anything is built
    mesh = sharding.make_mesh(config.mesh)
    for name in config.data.mixture:
        sharding.batch_size_divides(config.data.datasets[name].batch_size, mesh, name)
    if config.data.image_size != config.model.vision.image_size:
        raise ValueError(f"config.data.image_size {config.data.image_size} != config.model.vision.image_size "
                         f"{config.model.vision.image_size}: set them equal")
    return mesh, models.build(config.model)


def make_step(config: ml_collections.ConfigDict, model: nn.Module, tx: Any, schedule: Any):
    """config's update, not jitted: step(state, frozen, batches) -> (state, metrics) (train_step.make_train_step
    with the mixture's weights and microbatches)."""
    weights = {n: config.data.datasets[n].weight for n in config.data.mixture}
    micro = {n: config.microbatches.get(n, 1) for n in config.data.mixture}
    return make_train_step(model, tx, schedule, weights, micro, config.loss.normalization,
                           max_update_ratio=float(guard_lib.resolve(config).max_update_ratio))


@dataclass
class Trainer:
    """Everything a run needs, built once from the config."""

    config: ml_collections.ConfigDict
    mesh: jax.sharding.Mesh
    model: nn.Module
    state: dict
    frozen: dict
    step_fn: Any
    schedule: Any

    @classmethod
    def create(cls, config: ml_collections.ConfigDict) -> "Trainer":
        mesh, model = mesh_and_model(config)
        init = initial_state(config, model, mesh)
        state, frozen = init.state, init.frozen
        state_sh = jax.tree.map(lambda x: x.sharding, state)
        frozen_sh = jax.tree.map(lambda x: x.sharding, frozen)
        # Traced inside activation_sharding: the models' activation constraints take the mesh's layout.
        step = sharding.with_activation_sharding(make_step(config, model, init.tx, init.schedule), mesh)
        step_fn = jax.jit(step, in_shardings=(state_sh, frozen_sh, None, sharding.replicated(mesh)),
                          out_shardings=(state_sh, sharding.replicated(mesh)), donate_argnums=0)
        return cls(config, mesh, model, state, frozen, step_fn, init.schedule)

    def train_step(self, batches: dict, lr_scale: float = 1.0) -> dict:
        """One update from process-local numpy batches (learning rate x lr_scale); returns device metrics."""
        batches = to_global(batches, self.mesh)
        self.state, metrics = self.compiled_step(batches)(self.state, self.frozen, batches, np.float32(lr_scale))
        return metrics

    def param_norm(self) -> jax.Array:
        """Global L2 norm of the trainable params (computed when logging, not in every step)."""
        fn = self.__dict__.get("_param_norm")
        if fn is None:
            fn = self.__dict__["_param_norm"] = jax.jit(optax.global_norm, out_shardings=sharding.replicated(self.mesh))
        return fn(self.state["trainable"])

    def compiled_step(self, batches: dict):
        """The step compiled for this set of datasets (round robin has one per dataset).

        Compiled ahead of the first call; with several processes they then meet at a barrier, so that
        compile-time differences between hosts do not exceed the collectives' connection timeouts
        (30 s for gloo on CPU) at the first all-reduce."""
        key = tuple(sorted(batches))
        cache = self.__dict__.setdefault("_compiled", {})
        if key not in cache:
            cache[key] = self.step_fn.lower(self.state, self.frozen, batches, np.float32(1.0)).compile()
            cluster.barrier(f"flamingo_jax_compiled_{'_'.join(key)}")
        return cache[key]


def train(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Runs config.total_steps updates, resuming from workdir's newest intact checkpoint; returns the last
    logged scalars. SIGTERM / SIGINT finish the current step, save a checkpoint and return early (the
    scalars then hold `preempted_at_step`). Unhealthy steps (flamingo_jax.guard) are never saved; a streak or
    a loss spike stops the run with TrainingError, or rolls it back when config.guard.rollback is set."""
    check_config(config)  # before the workdir exists
    mesh_and_model(config)  # a mesh or a batch that does not fit the devices: also before anything is written
    os.makedirs(workdir, exist_ok=True)
    preempt = Preemption()  # from the start: a signal while compiling still ends with a save
    try:
        return _train(config, workdir, preempt)
    finally:
        preempt.restore_handlers()


def _train(config: ml_collections.ConfigDict, workdir: str, preempt: Preemption) -> dict:
    trainer = Trainer.create(config)
    data = make_data_iterator(config, jax.process_index(), jax.process_count())
    ckpt = checkpoint.Checkpoints(workdir, config, trainer.mesh)
    trainer.frozen, ckpt.frozen_manifest = checkpoint.prepare_frozen(workdir, config, trainer.frozen)
    guard = guard_lib.Guard(guard_lib.resolve(config))
    restored = ckpt.restore(trainer.state)
    if restored is not None:
        trainer.state = restored.state
        data.set_state(restored.data_state)
        guard.load(restored.meta.get("guard"))
        logging.info("resumed from step %d of %s", restored.step, ckpt.directory)
    start = int(trainer.state["step"])
    log = MetricsLog(workdir, config.total_steps)
    last: dict = {}
    tick, tick_step = time.perf_counter(), start
    saved = start if restored is not None else -1
    if restored is None and guard.c.rollback:  # something to roll back to, even before the first save
        ckpt.save(start, trainer.state, data.get_state(), guard.state_dict())
        saved = start
    # One stdout line at every log step and at least every 10 s (process 0; config.progress=False: none).
    progress = Progress("[train] step", config.total_steps, start=start, enabled=bool(config.get("progress", True)) and
                        jax.process_index() == 0)

    def say(message: str) -> None:
        logging.warning(message)
        if jax.process_index() == 0:
            print(message, flush=True)

    def write_log(at: int, scalars: dict) -> None:
        try:
            log.write(at, scalars)
        except OSError as e:  # the log's disk is full or gone: a failed save in flight is the better report
            ckpt.wait()
            raise TrainingError(f"writing the logs in {workdir} failed at step {at} ({checkpoint.one_line(e)}); "
                                f"free some space (or fix --workdir), then rerun the same command to resume "
                                f"from the last checkpoint, step {max(saved, 0)}") from None

    def save(at: int, why: str) -> None:
        nonlocal saved
        if guard.healthy:
            ckpt.save(at, trainer.state, data.get_state(), guard.state_dict())
            saved = at
        else:  # skipped or spiking steps are never checkpointed: the last saved step stays the healthy one
            logging.warning(
                "step %d: %s checkpoint not written: the run is unhealthy (%d skipped updates in a "
                "row, %d loss spikes in a row)", at, why, guard.streak, guard.spike_run)

    try:
        step = start
        while step < config.total_steps:
            if preempt.flag and saved == step:  # signalled before any new step: nothing to add
                break
            ckpt.check_errors()  # a failed asynchronous save stops the run before more unsaved work
            metrics = trainer.train_step(next(data), guard.lr_scale(step))
            step += 1
            # The guard reads a few scalars every step (it waits for the step; the data of the next one is
            # prepared after): skipped updates, spikes and rollbacks are decided on exact per-step values.
            trouble = guard.observe(
                {k: v.item()
                 for k, v in jax.device_get({k: metrics[k]
                                             for k in guard_lib.METRICS}).items()})
            progress.count()
            if step % config.log_every == 0 or step == config.total_steps or trouble:
                scalars = {k: float(v) for k, v in jax.device_get(metrics).items()}
                scalars["param_norm"] = float(trainer.param_norm())
                now = time.perf_counter()
                scalars["steps_per_sec"] = (step - tick_step) / (now - tick)
                # data/<dataset>/{records, dropped/<reason>, repaired/<event>}: cumulative, resumed with the data
                scalars.update({k: float(v) for k, v in getattr(data, "metrics", dict)().items()})
                tick, tick_step = now, step
                write_log(step, scalars)
                last = scalars
                progress.show(loss=scalars["loss"])
            elif progress.due():
                progress.show(loss=float(metrics["loss"]))
            if trouble:
                what = guard.describe(step)
                if not guard.can_roll_back():
                    ckpt.wait()
                    steps = ckpt.steps()
                    where = (f"the last healthy checkpoint is step {steps[-1]} in {ckpt.directory}: rerun with a "
                             f"lower optimizer.lr (or guard.rollback=True) to resume from it"
                             if steps else "no checkpoint was written: rerun with a lower optimizer.lr")
                    if guard.c.rollback:
                        what += f"; guard.max_rollbacks={guard.c.max_rollbacks} rollbacks were used up"
                    raise TrainingError(f"{what}; nothing was saved after step {max(saved, 0)}; {where}")
                step = _roll_back(trainer, data, ckpt, guard, log, write_log, step, what, say)
                saved = tick_step = step
                tick = time.perf_counter()
                continue
            if preempt.reached(step):
                save(step, preempt.signal_name or "preemption")
                break
            if ckpt.due(step) or step == config.total_steps:
                save(step, "scheduled")
        if preempt.flag:
            ckpt.wait()
            if saved == step:
                message = (f"{preempt.signal_name}: saved the checkpoint of step {saved} in {ckpt.directory}; "
                           f"run the same command to resume")
            else:
                message = (f"{preempt.signal_name}: stopped at step {step} without saving it (the run was "
                           f"unhealthy); the last checkpoint is step {saved} in {ckpt.directory}; run the same "
                           f"command to resume from it")
            say(message)
            last = {**last, "preempted_at_step": float(saved)}
        elif not guard.healthy:
            say(f"finished at step {step} while unhealthy ({guard.streak} skipped updates in a row, "
                f"{guard.spike_run} loss spikes in a row): its checkpoint was not written; the last is step "
                f"{saved}")
        ckpt.wait()  # the last save's failure is an error of this run
    finally:
        ckpt.close()  # waits for the last asynchronous save
        log.close()
    return last


def _roll_back(trainer: "Trainer", data: Any, ckpt: checkpoint.Checkpoints, guard: guard_lib.Guard, log: MetricsLog,
               write_log, step: int, what: str, say) -> int:
    """Back to the newest healthy checkpoint (every checkpoint is: unhealthy steps are never saved), then
    skip guard.skip_batches batches and lower the learning rate for guard.lr_factor_steps steps. Logged to
    metrics.jsonl and TensorBoard at `step` (rollback: the count, rollback_to_step, skipped_batches,
    lr_factor). Returns the step the run goes on from."""
    ckpt.wait()
    restored = ckpt.restore(trainer.state)
    if restored is None:  # not reached: a rollback run saves its first step before training
        raise TrainingError(f"{what}; no checkpoint to roll back to in {ckpt.directory}")
    trainer.state = restored.state
    data.set_state(restored.data_state)
    guard.load(restored.meta.get("guard"), rollbacks=guard.rollbacks + 1)
    c = guard.c
    for _ in range(int(c.skip_batches)):
        next(data)
    if int(c.lr_factor_steps) and float(c.lr_factor) != 1.0:
        guard.lr_until = restored.step + int(c.lr_factor_steps)
    write_log(
        step, {
            "rollback": float(guard.rollbacks), "rollback_to_step": float(restored.step), "skipped_batches": float(
                c.skip_batches), "lr_factor": float(c.lr_factor) if guard.lr_until > restored.step else 1.0
        })
    say(f"rollback {guard.rollbacks}/{c.max_rollbacks}: {what}; restored step {restored.step}, skipped "
        f"{c.skip_batches} batches, learning rate x {guard.lr_scale(restored.step):g} until step "
        f"{max(guard.lr_until, restored.step)}")
    return restored.step


def initialize_distributed(f: dict) -> str | None:
    """jax.distributed from the flags, the JAX_* environment variables or a detected cluster
    (flamingo_jax.cluster.initialize); None when this is the only process."""
    return cluster.initialize(f["coordinator"].value, f["num_processes"].value, f["process_id"].value,
                              auto=f["cluster_detection"].value, heartbeat_timeout_s=f["heartbeat_timeout"].value)


def main(argv, f: dict):
    del argv
    if not f["workdir"].value:
        raise SystemExit("error: --workdir is required")
    if f["config"].value is None:
        raise SystemExit("error: --config is required (e.g. --config experiments/tiny.py)")
    try:
        check_config(f["config"].value)
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    initialize_distributed(f)
    try:
        last = train(f["config"].value, f["workdir"].value)
    except (sharding.MeshError, TrainingError, checkpoint.CheckpointError) as e:
        raise SystemExit(f"error: {e}") from None
    logging.info("done: %s", last)
    if jax.process_index() == 0:
        print(json.dumps({"final": last}))


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, with the errors a user can cause (an unknown --config.<field>, a value of the
    wrong type, an unreadable config file) as one line on stderr and exit status 1, before anything runs."""
    from flamingo_jax.config_files import resolve_argv

    try:
        return flags.FLAGS(resolve_argv(argv))
    except flags.Error as e:
        raise SystemExit(f"error: {' '.join(str(e).split())}") from None
    except (AttributeError, KeyError) as e:  # ml_collections: an override of a field the config lacks
        name = str(e).strip("\"'")
        given = [a.split("=")[0] for a in argv if a.startswith("--config.") and name in a]
        raise SystemExit(f"error: {', '.join(given) or name}: the config has no field {name!r} (configs are "
                         f"locked: check the spelling against the experiment file)") from None
    except Exception as e:  # noqa: BLE001 - e.g. the config file raised, or its get_config(arg) did
        from flamingo_jax.checkpoint import one_line
        raise SystemExit(f"error: the config could not be loaded ({one_line(e)})") from None


def run() -> None:
    """The `flamingo-train` console script (pyproject.toml)."""
    app.run(functools.partial(main, f=define_flags()), flags_parser=parse_flags)


if __name__ == "__main__":
    run()
