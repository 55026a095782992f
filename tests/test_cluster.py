"""Cluster launch (flamingo_jax.cluster): environment detection; the trainer CLI started as two processes with
only a SLURM-like environment (no coordinator flags), preempted by SIGTERM and resumed, against one process on
the same mesh; and a process killed mid-run stopping the other within a bound."""

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from flamingo_jax import cluster

ROOT = Path(__file__).resolve().parents[1]
STEPS = 8
# experiments/tiny.py on synthetic batches, 4 sequences per dataset (divisible over data*fsdp = 4)
TINY = [
    f"--config={ROOT / 'experiments/tiny.py'}", "--config.data.source=synthetic", f"--config.total_steps={STEPS}",
    "--config.log_every=1", "--config.checkpoint_every=0",
    *(f"--config.data.datasets.{n}.batch_size=4" for n in ("m3w", "align", "ltip", "vtp"))
]
MESH = ["--config.mesh.data=2", "--config.mesh.fsdp=2", "--config.mesh.model=1"]
BOUND_SLACK_S = 20  # beyond the heartbeat timeout: the coordination service's polling, process teardown


def test_detect_reads_the_cluster_environments_jax_bootstraps_from():
    slurm = dict(SLURM_JOB_ID="7", SLURM_STEP_NODELIST="n[1-2]", SLURM_NTASKS="2", SLURM_PROCID="1", SLURM_LOCALID="0")
    assert cluster.detect(slurm) == "slurm"
    assert cluster.detect({**slurm, "SLURM_NTASKS": "1"}) is None  # a one-task job: nothing to start
    assert cluster.detect({k: v for k, v in slurm.items() if k != "SLURM_STEP_NODELIST"}) is None  # sbatch shell
    assert cluster.detect({"OMPI_MCA_orte_hnp_uri": "1.0;tcp://10.0.0.1:4000", "OMPI_COMM_WORLD_SIZE": "4"}) == "ompi"
    assert cluster.detect({"TPU_WORKER_HOSTNAMES": "w0,w1,w2,w3"}) == "tpu"
    assert cluster.detect({"TPU_WORKER_HOSTNAMES": "w0"}) is None
    assert cluster.detect({}) is None


def test_explicit_process_count_needs_an_address():
    with pytest.raises(ValueError, match="--coordinator_address and --process_id"):
        cluster.initialize(None, 2, None)


def _free_slurm_job_id() -> int:
    """A job id whose derived coordinator port (61440 + id % 4096, as JAX's SlurmCluster computes it) is free."""
    for _ in range(100):
        job = random.randrange(4096)
        with socket.socket() as s:
            try:
                s.bind(("", 61440 + job))
            except OSError:
                continue
        return 10_000 * 4096 + job
    raise RuntimeError("no free port in 61440..65535")


def _env(devices: int, **extra) -> dict:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SLURM_", "JAX_COORDINATOR", "JAX_NUM_PROC", "JAX_PROCESS_ID", "OMPI_"))
    }
    env.update(PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu", **extra)
    env["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={devices}"
    return env


class Launched:
    """A trainer process whose stdout / stderr go to files (pipes left unread could fill and block it)."""

    def __init__(self, args: list[str], env: dict, log: Path):
        self.out, self.err = log.with_suffix(".out"), log.with_suffix(".err")
        with open(self.out, "w") as out, open(self.err, "w") as err:
            self.proc = subprocess.Popen([sys.executable, "-m", "flamingo_jax.train", *args], env=env, cwd=ROOT,
                                         stdout=out, stderr=err)

    def wait(self, timeout: float) -> tuple[int, str, str]:
        rc = self.proc.wait(timeout=timeout)
        return rc, self.out.read_text(), self.err.read_text()


def launch_slurm(workdir: Path, args: list[str], ntasks: int = 2, devices: int = 2) -> list[Launched]:
    """`ntasks` trainer processes with a SLURM-like environment (as srun sets it) and no coordinator flags."""
    job = _free_slurm_job_id()
    logs = workdir.parent / f"{workdir.name}-logs"
    logs.mkdir(exist_ok=True)
    return [
        Launched([f"--workdir={workdir}", *args],
                 _env(devices, SLURM_JOB_ID=str(job), SLURM_NTASKS=str(ntasks), SLURM_PROCID=str(i),
                      SLURM_LOCALID=str(i), SLURM_STEP_NODELIST="localhost"), logs / f"job{job}-task{i}")
        for i in range(ntasks)
    ]


def losses(workdir: Path) -> list[float]:
    rows = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows]


@pytest.fixture(scope="module")
def one_process(tmp_path_factory) -> list[float]:
    """The 8 steps' losses of the tiny config trained by one process on 4 devices, mesh data=2, fsdp=2."""
    one = tmp_path_factory.mktemp("one")
    single = subprocess.run([sys.executable, "-m", "flamingo_jax.train", f"--workdir={one}", *TINY, *MESH], env=_env(4),
                            cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert single.returncode == 0, single.stderr[-3000:]
    assert len(losses(one)) == STEPS
    return losses(one)


# data parallel across the two processes (mesh.dcn.data=2: each process is a slice), fsdp=2 within each
TWO = [*TINY, *MESH, "--config.mesh.dcn.data=2", "--heartbeat_timeout=10"]


def _wait_for_step(workdir: Path, procs: list[Launched], step: int, timeout: float = 600) -> None:
    path = workdir / "metrics.jsonl"
    end = time.time() + timeout
    while time.time() < end:
        if path.exists() and len(path.read_text().splitlines()) >= step:
            return
        if any(p.proc.poll() is not None for p in procs):
            raise AssertionError("a process ended early: " + procs[0].err.read_text()[-3000:])
        time.sleep(0.05)
    raise AssertionError(f"no step {step} within {timeout} s")


@pytest.mark.slow
def test_slurm_launch_sigterm_to_both_and_rerun_match_one_process(tmp_path, one_process):
    """Two processes started with only the SLURM-like environment; SIGTERM to both mid-run: both exit 0
    having saved the same step (JAX's preemption sync point); the same command then resumes, and the 8 steps'
    losses equal one process's (rtol 1e-5). One run covers the launch, the preemption and the resume, to keep
    the suite's time down (each two-process start costs a minute of imports and compiles here)."""
    work = tmp_path / "run"
    procs = launch_slurm(work, TWO)
    _wait_for_step(work, procs, 2)
    for p in procs:
        p.proc.send_signal(signal.SIGTERM)
    outs = [p.wait(300) for p in procs]
    assert [o[0] for o in outs] == [0, 0], outs[0][2][-2000:] + outs[1][2][-2000:]
    saved = sorted(int(d.name) for d in (work / "checkpoints").iterdir() if d.name.isdigit())
    assert len(saved) == 1 and 2 <= saved[0] <= STEPS, saved
    for _, out, err in outs:  # every process reports the same saved step
        assert f"saved the checkpoint of step {saved[0]}" in out + err
    outs = [p.wait(900) for p in launch_slurm(work, TWO)]
    assert [o[0] for o in outs] == [0, 0], outs[0][2][-3000:] + outs[1][2][-3000:]
    assert '"final"' in outs[0][1] and '"final"' not in outs[1][1]  # process 0 reports, the other does not
    rows = {}
    for line in (work / "metrics.jsonl").read_text().splitlines():  # a resumed step: the later line wins
        r = json.loads(line)
        rows[r["step"]] = r["loss"]
    assert sorted(rows) == list(range(1, STEPS + 1))
    np.testing.assert_allclose([rows[s] for s in sorted(rows)], one_process, rtol=1e-5)


@pytest.mark.slow
def test_a_dead_process_stops_the_other_within_the_bound(tmp_path, victim=1):
    """SIGKILL of process 1 mid-run: process 0 (the coordinator, blocked in a collective) exits non-zero
    within --heartbeat_timeout (10 s) plus BOUND_SLACK_S, never hangs. (Killing process 0 instead stops
    process 1 at once: it loses the coordination service; measured 0.5 s.)"""
    work = tmp_path / "run"
    procs = launch_slurm(work, [*TWO, "--config.total_steps=1000"])
    _wait_for_step(work, procs, 2)
    procs[victim].proc.kill()
    start = time.time()
    survivor = procs[1 - victim]
    try:
        rc, _, err = survivor.wait(10 + BOUND_SLACK_S)
    except subprocess.TimeoutExpired:
        survivor.proc.kill()
        raise AssertionError(f"process {1 - victim} still running {10 + BOUND_SLACK_S} s after process {victim} "
                             f"died") from None
    procs[victim].wait(60)
    assert rc != 0, err[-2000:]
    print(f"process {1 - victim} exited with {rc} after {time.time() - start:.1f} s")
