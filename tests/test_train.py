"""The trainer end to end: meshes, two processes, resuming on another mesh, frozen params, the CLI, one-line
config errors.

Meshes are compared on more than the losses: over the tiny run's 3 steps the lr=1e-3 run's losses differ from
an lr=0 run's by at most 6e-5 relative, so a mesh that applied no update or dropped the gradient all-reduce would
pass a loss check. Each step's gradient and update norms and the params' total change (`moved`) are compared at
RTOL (seen: 4e-6 at most between meshes), and a control checks that the lr=0 run is far outside it.
"""

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from flamingo_jax import optim, sharding
from flamingo_jax.train import Trainer, make_data_iterator, train
from tiny import tiny_train_config
from train_worker import STEP_KEYS, copy_tree, run_steps

ROOT = Path(__file__).resolve().parents[1]
WORKER = str(Path(__file__).parent / "train_worker.py")
MESHES = "8,1,1;2,4,1;2,2,2"
STEPS = 3
RESUME_AT = 1  # the worker saves after this step on the first mesh and resumes on the others
RTOL = 1e-5


def _env(devices: int) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
    env["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={devices}"
    return env


def _records(stdout: str) -> dict:
    line = [l for l in stdout.splitlines() if l.startswith("RECORDS ")][-1]
    return json.loads(line[len("RECORDS "):])


def _assert_same_steps(got: dict, want: dict, what: str, first: int = 0) -> None:
    """Per-step losses, gradient and update norms (want's from step `first`) and the params' change, at RTOL."""
    for k in STEP_KEYS:
        np.testing.assert_allclose(got[k], want[k][first:], rtol=RTOL, atol=1e-9, err_msg=f"{what}: {k}")
    moved = want["moved_since"] if first else want["moved"]
    np.testing.assert_allclose(got["moved"], moved, rtol=RTOL, err_msg=f"{what}: moved")


@pytest.fixture(scope="module")
def single_device(tmp_path_factory):
    """The tiny config trained by train() in this process on one device: (losses, metrics.jsonl rows)."""
    config = tiny_train_config(total_steps=STEPS)
    workdir = tmp_path_factory.mktemp("run")
    train(config, str(workdir))
    rows = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows], rows


@pytest.fixture(scope="module")
def reference():
    """The same STEPS updates on one device through a Trainer (train_worker.run_steps, as on the meshes), then
    the control: the same run from the same state at lr 0. Also the params before and after the real run."""
    config = tiny_train_config(total_steps=STEPS)
    trainer = Trainer.create(config)
    start = copy_tree(trainer.state)
    before = jax.tree.map(np.asarray, {"trainable": trainer.state["trainable"], "frozen": trainer.frozen})
    real = run_steps(trainer, make_data_iterator(config, 0, 1), STEPS, since=RESUME_AT)
    after = jax.tree.map(np.asarray, {"trainable": trainer.state["trainable"], "frozen": trainer.frozen})
    trainer.state = start
    control = run_steps(trainer, make_data_iterator(config, 0, 1), STEPS, lr_scale=0.0)
    return dict(real=real, control=control, before=before, after=after, trainer=trainer)


@pytest.fixture(scope="module")
def eight_devices(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("mesh_resume")
    out = subprocess.run([
        sys.executable, WORKER, "--meshes", MESHES, "--steps",
        str(STEPS), "--resume_at",
        str(RESUME_AT), "--workdir",
        str(workdir)
    ], env=_env(8), capture_output=True, text=True, cwd=ROOT, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    return _records(out.stdout)


def test_metrics_jsonl_has_the_promised_fields(single_device, reference):
    losses, rows = single_device
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    for key in ("loss", "loss/m3w", "loss/align", "seq_loss/m3w", "seq_loss/align", "tokens/m3w", "learning_rate",
                "grad_norm", "param_norm", "steps_per_sec"):
        assert all(np.isfinite(r[key]) for r in rows), key
    # the default objective is the paper's per-sequence sum; loss/<dataset> stays the per-token mean
    weights = {n: d.weight for n, d in tiny_train_config().data.datasets.items()}
    for r in rows:
        np.testing.assert_allclose(r["loss"], sum(weights[n] * r[f"seq_loss/{n}"] for n in ("m3w", "align")), rtol=1e-5)
        assert r["seq_loss/m3w"] > r["loss/m3w"]
    # train() logs the steps that the Trainer takes (same device, same program)
    np.testing.assert_allclose(losses, reference["real"]["loss"], rtol=1e-6)
    np.testing.assert_allclose([r["grad_norm"] for r in rows], reference["real"]["grad_norm"], rtol=1e-6)
    trainable = reference["after"]["trainable"]
    np.testing.assert_allclose(rows[-1]["param_norm"],
                               np.sqrt(sum(np.sum(np.square(x, dtype=np.float64)) for x in jax.tree.leaves(trainable))),
                               rtol=1e-5)


def test_the_lr0_control_is_far_outside_the_tolerance(reference):
    """What the mesh tests' tolerance must tell apart: the same run without updates. Its losses are within
    6e-5 (so losses alone cannot), but its params do not move at all and its last gradient norm differs by
    far more than RTOL (the first two are equal: the warmup's learning rate is 0 at step 1)."""
    real, control = reference["real"], reference["control"]
    assert control["moved"] == 0.0 and real["moved"] > 1e-2
    grad_gap = np.abs(np.subtract(real["grad_norm"], control["grad_norm"])) / np.asarray(control["grad_norm"])
    assert grad_gap[0] == grad_gap[1] == 0.0 and grad_gap[2] > 100 * RTOL, grad_gap
    assert real["update_norm"][0] == 0.0 and np.all(np.asarray(real["update_norm"][1:]) > 1e-3)
    assert control["update_norm"] == [0.0] * STEPS


@pytest.mark.slow
def test_every_mesh_takes_the_same_steps(reference, eight_devices):
    for mesh, got in eight_devices.items():
        _assert_same_steps(got, reference["real"], f"mesh {mesh}")


@pytest.mark.slow
def test_training_goes_on_after_resuming_on_another_mesh(reference, eight_devices):
    """A checkpoint of step RESUME_AT saved on the 8x1x1 mesh, restored onto 2x4x1 and 2x2x2 (params and Adam
    moments resharded, data position restored): the remaining steps are the one-device run's."""
    first = MESHES.split(";")[0]
    assert "resumed" not in eight_devices[first]
    for mesh in MESHES.split(";")[1:]:
        resumed = eight_devices[mesh]["resumed"]
        assert len(resumed["loss"]) == STEPS - RESUME_AT
        _assert_same_steps(resumed, reference["real"], f"resumed on mesh {mesh}", first=RESUME_AT)


@pytest.mark.slow
def test_two_processes_match_one_process(reference, eight_devices):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = [
        subprocess.Popen([
            sys.executable, WORKER, "--meshes", "8,1,1", "--steps",
            str(STEPS), "--process",
            str(i), "--of", "2", "--port",
            str(port)
        ], env=_env(4), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)
    ]
    outs = [p.communicate(timeout=900) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    assert "RECORDS" not in outs[1][0]  # only process 0 reports
    _assert_same_steps(_records(outs[0][0])["8,1,1"], reference["real"], "two processes")


def test_frozen_params_unchanged_trainable_moved_and_no_optimizer_state_for_frozen(reference):
    before, after, trainer = reference["before"], reference["after"], reference["trainer"]
    for x, y in zip(jax.tree.leaves(after["frozen"]), jax.tree.leaves(before["frozen"])):
        np.testing.assert_array_equal(x, y)
    # and every trainable array moved (the gates, the resampler, the cross-attention layers)
    flat = jax.tree_util.tree_flatten_with_path(after["trainable"])[0]
    assert len(flat) == len(jax.tree.leaves(before["trainable"])) > 10
    still = [
        jax.tree_util.keystr(path) for (path, x), y in zip(flat, jax.tree.leaves(before["trainable"]))
        if np.array_equal(x, y)
    ]
    assert not still, f"trainable params that did not move: {still}"
    trainable_bytes = optim.tree_bytes(trainer.state["trainable"])
    opt_bytes = optim.tree_bytes(trainer.state["opt_state"])
    frozen_bytes = optim.tree_bytes(trainer.frozen)
    assert frozen_bytes > 0 and set(trainer.frozen) == {"vision", "lm"}
    # Two Adam moments per trainable value, plus a few scalar counters: nothing for the frozen towers.
    assert 2 * trainable_bytes <= opt_bytes <= 2 * trainable_bytes + 64
    # Adam's moments mirror the trainable tree leaf for leaf.
    mu = trainer.state["opt_state"].mu  # optim.fused_adamw's state (the config default)
    assert jax.tree.structure(mu) == jax.tree.structure(trainer.state["trainable"])


def _world_config(data_dir: str, total_steps: int = 5):
    """The tiny config on the generated world read by the real grain pipeline (data.source 'world'), two datasets
    in round robin, m3w's batch in 2 microbatches, one layer per tower (a quick compile)."""
    config = tiny_train_config(total_steps=total_steps, mode="round_robin")
    config.data.source, config.data.data_dir = "world", data_dir
    for name in ("m3w", "align"):
        config.data.datasets[name].batch_size = 4
    config.microbatches.m3w = 2
    config.model.vision.layers = config.model.resampler.depth = config.model.lm.num_layers = 1
    config.checkpoint_every = 0
    return config


class _SigintAt:
    """The trainer's data iterator, sending this process a SIGINT while it fetches batch `at` (1-based)."""

    def __init__(self, it, at: int):
        self.it, self.at, self.n = it, at, 0

    def __iter__(self):
        return self

    def __next__(self):
        self.n += 1
        if self.n == self.at:
            os.kill(os.getpid(), signal.SIGINT)
        return next(self.it)

    def get_state(self):
        return self.it.get_state()

    def set_state(self, state):
        self.it.set_state(state)


def _saved_trainable(workdir: Path, step: int) -> dict:
    import orbax.checkpoint as ocp

    return ocp.StandardCheckpointer().restore(workdir / "checkpoints" / str(step) / "state")["trainable"]


def test_sigint_saves_and_the_rerun_resumes_the_real_data_pipeline_exactly(tmp_path, monkeypatch, capsys):
    """SIGINT during step 3 of 5: the step finishes, is saved, train() returns (preempted_at_step 3) and says so;
    the rerun resumes at step 3 (it logs only steps 4 and 5) with the grain iterator's position and the round
    robin's turn restored (step 4 is align's, step 5 m3w's third batch), and ends bit-identical to the
    uninterrupted run."""
    import flamingo_jax.train as train_module

    data_dir = str(tmp_path / "data")
    a, b = tmp_path / "a", tmp_path / "b"
    train(_world_config(data_dir), str(a))
    make = train_module.make_data_iterator
    monkeypatch.setattr(train_module, "make_data_iterator", lambda *args, **kw: _SigintAt(make(*args, **kw), 3))
    last = train(_world_config(data_dir), str(b))
    assert last["preempted_at_step"] == 3.0
    assert "SIGINT: saved the checkpoint of step 3" in capsys.readouterr().out
    assert sorted(int(p.name) for p in (b / "checkpoints").iterdir() if p.name.isdigit()) == [3]
    monkeypatch.setattr(train_module, "make_data_iterator", make)
    train(_world_config(data_dir), str(b))

    rows_a, rows_b = ([json.loads(l) for l in (w / "metrics.jsonl").read_text().splitlines()] for w in (a, b))
    assert [r["step"] for r in rows_b] == [1, 2, 3, 4, 5]  # the rerun did not start over
    assert [[k for k in r if k.startswith("loss/")]
            for r in rows_a] == [["loss/m3w"], ["loss/align"]] * 2 + [["loss/m3w"]]
    assert [r["loss"] for r in rows_b] == [r["loss"] for r in rows_a]  # bitwise
    want, got = _saved_trainable(a, 5), _saved_trainable(b, 5)
    for x, y in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_array_equal(x, y)


def test_mesh_and_batch_errors_are_one_line():
    with pytest.raises(sharding.MeshError, match="does not fit 8 devices"):
        sharding.mesh_shape({"data": 3, "fsdp": 1, "model": 1}, 8)
    assert sharding.mesh_shape({"data": -1, "fsdp": 2, "model": 2}, 8) == (2, 2, 2)
    config = tiny_train_config(mesh=(2, 1, 1))
    with pytest.raises(sharding.MeshError, match="does not fit 1 devices"):
        Trainer.create(config)


def test_unknown_loss_normalization_is_an_error_before_anything_is_built():
    config = tiny_train_config()
    config.loss.normalization = "mean"
    with pytest.raises(ValueError, match="'sequence'.*'token'"):
        Trainer.create(config)


def test_cli_reports_config_errors_in_one_line(tmp_path):
    out = subprocess.run([
        sys.executable, "-m", "flamingo_jax.train", "--config",
        str(ROOT / "experiments/tiny.py"), "--workdir",
        str(tmp_path), "--config.mesh.data=3", "--config.data.source=synthetic"
    ], env=_env(1), capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode != 0
    assert "error: mesh" in out.stderr and "config.mesh" in out.stderr
