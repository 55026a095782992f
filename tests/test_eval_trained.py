"""Evaluation of a TRAINED tiny checkpoint (experiments/tiny.py, 3 steps of flamingo_jax.train) restored straight
into its shardings, under JAX_TRANSFER_GUARD=disallow (tests/eval_trained_worker.py in subprocesses):

- 8 simulated CPU devices, mesh fsdp=4, model=2, give one device's outputs and scores on every world task at 0
  and 4 shots and a RICES cell, and ablate's evaluation of the run goes through the same path;
- two jax.distributed processes (4 devices each, the same mesh over both) give one process's outputs and scores
  (captions and video QA at 0 and 4 shots, the RICES cell, and a VisDial cell whose queries rank their own 100
  options: each process passes its own rows' options to one collective Decoder.rank_per_row call).

The trained model's answers are still empty strings (3 steps on synthetic batches), so every open-ended score is 0
and the check with teeth is on each query's beam log-likelihood (rel 1e-4), which also pins every output to its
query; VisDial's outputs carry every option's log-likelihood (rel 1e-4) and its NDCG is not 0.
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import tiny

ROOT = Path(__file__).resolve().parents[1]
WORKER = ROOT / "tests" / "eval_trained_worker.py"
WORLD_TASKS = {"captions", "knowledge_vqa", "video_captions", "video_qa", "vqa"}
PROCESS_TASKS = ("captions", "video_qa")  # images and videos, 20- and 5-token answers (compiles kept few)
OPTIONS_CELL = "visdial/0/random"  # eval_trained_worker.OPTIONS
DEV = {"captions": "coco", "vqa": "vqav2", "knowledge_vqa": "okvqa", "video_qa": "msvdqa", "video_captions": "vatex"}


def _env(devices: int) -> dict:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SLURM_", "JAX_COORDINATOR", "JAX_NUM_PROC", "JAX_PROCESS_ID", "OMPI_"))
    }
    env.update(PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu", JAX_TRANSFER_GUARD="disallow")
    env["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={devices}"
    return env


def _report(stdout: str) -> dict:
    return json.loads([line for line in stdout.splitlines() if line.startswith("EVAL ")][-1][len("EVAL "):])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(training workdir, data dir): experiments/tiny.py trained 3 steps on synthetic batches by the trainer, and
    the world vocabulary built once in the data dir the workers share."""
    from flamingo_jax import train
    from flamingo_jax.data import mixture, testing

    import eval_trained_worker

    workdir = tmp_path_factory.mktemp("trained") / "run"
    train.train(tiny.tiny_train_config(total_steps=3), str(workdir))
    data = testing.tiny_config()
    mixture.make_vocab(data)
    eval_trained_worker.prepare_options(data.data_dir)
    return workdir, data.data_dir


@pytest.fixture(scope="module")
def devices_run(trained, tmp_path_factory):
    workdir, data_dir = trained
    out = subprocess.run([
        sys.executable,
        str(WORKER), "--mode", "devices", "--train_dir",
        str(workdir), "--data_dir", data_dir, "--out",
        str(tmp_path_factory.mktemp("devices"))
    ], env=_env(8), cwd=ROOT, capture_output=True, text=True, timeout=1800)
    assert out.returncode == 0, out.stderr[-4000:]
    return _report(out.stdout)


def _assert_same_cells(got: dict, want: dict) -> None:
    for name, cell in want.items():
        assert [(o["index"], o["prediction"]) for o in got[name]["outputs"]] == \
            [(o["index"], o["prediction"]) for o in cell["outputs"]], name
        for a, b in zip(got[name]["outputs"], cell["outputs"]):
            if "scores" in b:  # ranked options: every option's log-likelihood
                assert len(a["scores"]) == len(b["scores"]), name
                np.testing.assert_allclose(a["scores"], b["scores"], rtol=1e-4, atol=1e-4, err_msg=name)
            else:
                assert a["logprob"] == pytest.approx(b["logprob"], rel=1e-4, abs=1e-4), name
        assert got[name]["score"] == pytest.approx(cell["score"], abs=1e-9), name
        assert got[name]["returned"] == pytest.approx(got[name]["score"], abs=1e-12), name


@pytest.mark.slow
def test_trained_checkpoint_on_8_devices_equals_one_device_under_the_transfer_guard(devices_run):
    r = devices_run
    assert r["step"] == 3 and r["max_abs_gate"] > 0  # a trained checkpoint (every gate starts at 0)
    for name in ("one", "mesh"):
        restored = r[name]["restored"]
        assert restored["step"] == 3 and restored["shardings_as_targets"] and restored["same_structure"]
        assert restored["max_abs_diff_to_host"] == 0.0, name  # the sharded restore reads the checkpoint's values
    assert r["one"]["restored"]["sharded_leaves"] == 0 and r["mesh"]["restored"]["sharded_leaves"] > 0
    one, mesh = r["one"]["cells"], r["mesh"]["cells"]
    assert set(one) == {f"{t}/{s}/random" for t in WORLD_TASKS for s in (0, 4)} | {"vqa/4/rices", OPTIONS_CELL}
    assert set(mesh) == set(one)
    for c in one.values():  # max_queries=4 (the video sets of the tiny world hold 2)
        assert [o["index"] for o in c["outputs"]] == list(range(len(c["outputs"]))) and 2 <= len(c["outputs"]) <= 4
    _assert_same_cells(mesh, one)
    options = [o["scores"] for o in one[OPTIONS_CELL]["outputs"]]  # VisDial: two rounds, 100 options each
    assert len(options) == 2 and {len(s) for s in options} == {100} and one[OPTIONS_CELL]["score"] > 0
    # ablate's evaluation of the run (its workdir, the config's mesh, under the guard): the same 0-shot scores
    assert r["ablate"] == pytest.approx({DEV[t]: 100 * mesh[f"{t}/0/random"]["score"] for t in WORLD_TASKS}, abs=1e-9)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_give_one_process_scores(trained, devices_run, tmp_path):
    workdir, data_dir = trained
    address = f"127.0.0.1:{_free_port()}"
    procs = []
    for i in range(2):
        log = open(tmp_path / f"process{i}.out", "w"), open(tmp_path / f"process{i}.err", "w")
        procs.append((subprocess.Popen([
            sys.executable,
            str(WORKER), "--mode", "process", "--tasks", ",".join(PROCESS_TASKS), "--train_dir",
            str(workdir), "--data_dir", data_dir, "--out",
            str(tmp_path), "--coordinator_address", address, "--num_processes", "2", "--process_id",
            str(i)
        ], env=_env(4), cwd=ROOT, stdout=log[0], stderr=log[1]), log))
    rcs = []
    for p, log in procs:
        try:
            rcs.append(p.wait(timeout=1800))
        finally:
            p.kill()
            for f in log:
                f.close()
    assert rcs == [0,
                   0], (tmp_path / "process0.err").read_text()[-3000:] + (tmp_path / "process1.err").read_text()[-3000:]
    r = _report((tmp_path / "process0.out").read_text())
    assert r["processes"] == 2 and r["devices"] == 8
    want = {k: v for k, v in devices_run["mesh"]["cells"].items() if k.split("/")[0] in PROCESS_TASKS}
    for name in ("vqa/4/rices", OPTIONS_CELL):
        want[name] = devices_run["mesh"]["cells"][name]
    assert set(r["cells"]) == set(want) and len(want) == 6
    _assert_same_cells(r["cells"], want)
    # results written once, by process 0: one results.json, each cell's outputs in one file
    assert len(list((tmp_path / "processes" / "eval" / "cells").glob("*/*.json"))) == len(r["cells"])
