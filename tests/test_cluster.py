"""Cluster launch (flamingo_jax.cluster): environment detection, and the trainer CLI started as two processes
with only a SLURM-like environment (no coordinator flags), against one process on the same mesh."""

import json
import os
import random
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
# experiments/tiny.py on synthetic batches, 8 sequences per dataset (divisible over data*fsdp = 8)
TINY = [f"--config={ROOT / 'experiments/tiny.py'}", "--config.data.source=synthetic", f"--config.total_steps={STEPS}",
        "--config.log_every=1", "--config.checkpoint_every=0",
        *(f"--config.data.datasets.{n}.batch_size=8" for n in ("m3w", "align", "ltip", "vtp"))]
MESH = ["--config.mesh.data=2", "--config.mesh.fsdp=4", "--config.mesh.model=1"]


def test_detect_reads_the_cluster_environments_jax_bootstraps_from():
    slurm = dict(SLURM_JOB_ID="7", SLURM_STEP_NODELIST="n[1-2]", SLURM_NTASKS="2", SLURM_PROCID="1",
                 SLURM_LOCALID="0")
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
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "JAX_COORDINATOR", "JAX_NUM_PROC",
                                                                     "JAX_PROCESS_ID", "OMPI_"))}
    env.update(PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu", **extra)
    env["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={devices}"
    return env


def launch_slurm(workdir: Path, args: list[str], ntasks: int = 2, devices: int = 4) -> list[subprocess.Popen]:
    """`ntasks` trainer processes with a SLURM-like environment (as srun sets it) and no coordinator flags."""
    job = _free_slurm_job_id()
    return [subprocess.Popen([sys.executable, "-m", "flamingo_jax.train", f"--workdir={workdir}", *args],
                             env=_env(devices, SLURM_JOB_ID=str(job), SLURM_NTASKS=str(ntasks), SLURM_PROCID=str(i),
                                      SLURM_LOCALID=str(i), SLURM_STEP_NODELIST="localhost"),
                             cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for i in range(ntasks)]


def losses(workdir: Path) -> list[float]:
    rows = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows]


@pytest.mark.slow
def test_slurm_environment_alone_launches_two_processes_that_match_one(tmp_path):
    one = tmp_path / "one"
    single = subprocess.run([sys.executable, "-m", "flamingo_jax.train", f"--workdir={one}", *TINY, *MESH],
                            env=_env(8), cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert single.returncode == 0, single.stderr[-3000:]
    two = tmp_path / "two"
    # data parallel across the two processes (mesh.dcn.data=2: each process is a slice), fsdp=4 within each
    procs = launch_slurm(two, [*TINY, *MESH, "--config.mesh.dcn.data=2"])
    outs = [p.communicate(timeout=900) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    assert '"final"' in outs[0][0] and '"final"' not in outs[1][0]  # process 0 reports, the other does not
    assert len(losses(one)) == STEPS
    np.testing.assert_allclose(losses(two), losses(one), rtol=1e-5)
