"""The trainer end to end: meshes, two processes, frozen params, the CLI, one-line config errors."""

import json
import os
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

ROOT = Path(__file__).resolve().parents[1]
WORKER = str(Path(__file__).parent / "train_worker.py")
MESHES = "8,1,1;2,4,1;2,2,2"
STEPS = 3


def _env(devices: int) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
    env["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={devices}"
    return env


def _losses(stdout: str) -> dict:
    line = [l for l in stdout.splitlines() if l.startswith("LOSSES ")][-1]
    return json.loads(line[len("LOSSES "):])


@pytest.fixture(scope="module")
def single_device(tmp_path_factory):
    """The tiny config trained in this process on one device: (losses, trainer before/after)."""
    config = tiny_train_config(total_steps=STEPS)
    workdir = tmp_path_factory.mktemp("run")
    train(config, str(workdir))
    rows = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows], rows


@pytest.fixture(scope="module")
def eight_devices():
    out = subprocess.run([sys.executable, WORKER, "--meshes", MESHES, "--steps", str(STEPS)], env=_env(8),
                         capture_output=True, text=True, cwd=ROOT, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    return _losses(out.stdout)


def test_metrics_jsonl_has_the_promised_fields(single_device):
    _, rows = single_device
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    for key in ("loss", "loss/m3w", "loss/align", "seq_loss/m3w", "seq_loss/align", "tokens/m3w", "learning_rate",
                "grad_norm", "param_norm", "steps_per_sec"):
        assert all(np.isfinite(r[key]) for r in rows), key
    # the default objective is the paper's per-sequence sum; loss/<dataset> stays the per-token mean
    weights = {n: d.weight for n, d in tiny_train_config().data.datasets.items()}
    for r in rows:
        np.testing.assert_allclose(r["loss"], sum(weights[n] * r[f"seq_loss/{n}"] for n in ("m3w", "align")),
                                   rtol=1e-5)
        assert r["seq_loss/m3w"] > r["loss/m3w"]


@pytest.mark.slow
def test_same_losses_on_every_mesh(single_device, eight_devices):
    losses, _ = single_device
    for mesh, got in eight_devices.items():
        np.testing.assert_allclose(got, losses, rtol=1e-3, err_msg=f"mesh {mesh}")


@pytest.mark.slow
def test_two_processes_match_one_process(eight_devices):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = [subprocess.Popen([sys.executable, WORKER, "--meshes", "8,1,1", "--steps", str(STEPS), "--process",
                               str(i), "--of", "2", "--port", str(port)], env=_env(4), cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    outs = [p.communicate(timeout=900) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    assert "LOSSES" not in outs[1][0]  # only process 0 reports
    np.testing.assert_allclose(_losses(outs[0][0])["8,1,1"], eight_devices["8,1,1"], rtol=1e-3)


def test_frozen_params_unchanged_and_without_optimizer_state():
    config = tiny_train_config(total_steps=2)
    trainer = Trainer.create(config)
    before = jax.tree.map(np.asarray, trainer.frozen)
    data = make_data_iterator(config, 0, 1)
    for _ in range(2):
        trainer.train_step(next(data))
    for x, y in zip(jax.tree.leaves(trainer.frozen), jax.tree.leaves(before)):
        np.testing.assert_array_equal(np.asarray(x), y)
    trainable_bytes = optim.tree_bytes(trainer.state["trainable"])
    opt_bytes = optim.tree_bytes(trainer.state["opt_state"])
    frozen_bytes = optim.tree_bytes(trainer.frozen)
    assert frozen_bytes > 0 and set(trainer.frozen) == {"vision", "lm"}
    # Two Adam moments per trainable value, plus a few scalar counters: nothing for the frozen towers.
    assert 2 * trainable_bytes <= opt_bytes <= 2 * trainable_bytes + 64
    # Adam's moments mirror the trainable tree leaf for leaf.
    mu = trainer.state["opt_state"].mu  # optim.fused_adamw's state (the config default)
    assert jax.tree.structure(mu) == jax.tree.structure(trainer.state["trainable"])


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
    out = subprocess.run([sys.executable, "-m", "flamingo_jax.train", "--config", str(ROOT / "experiments/tiny.py"),
                          "--workdir", str(tmp_path), "--config.mesh.data=3", "--config.data.source=synthetic"],
                         env=_env(1), capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode != 0
    assert "error: mesh" in out.stderr and "config.mesh" in out.stderr
