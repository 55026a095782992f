"""Multi-process launch: jax.distributed from explicit flags, or from the cluster's own environment.

`initialize(...)` starts jax.distributed (once, before anything touches a device):

- explicit: a process count above 1 from the flags or JAX_NUM_PROCESSES (with the coordinator address and
  this process's index from the flags or JAX_COORDINATOR_ADDRESS / JAX_PROCESS_ID);
- otherwise, where a cluster environment that JAX bootstraps from is present (`detect()`: Cloud TPU pod
  slices, SLURM, Open MPI's mpirun, Kubernetes with the `kubernetes` package), `jax.distributed.initialize()`
  with no address arguments, so JAX's own cluster detection finds the coordinator, the process count and
  the index (SLURM: the first host of SLURM_STEP_NODELIST, port 61440 + SLURM_JOB_ID % 4096 unless
  JAX_COORDINATOR_PORT is set);
- otherwise a single process, nothing started.

JAX has no public call that says which cluster it would detect, so `detect()` checks the same environment
markers as its ClusterEnv classes (jax/_src/clusters). A SLURM or mpirun job of one process starts nothing;
on a Cloud TPU VM JAX asks the metadata server how many hosts the slice has (one host: one process).

Failure bound: every process sends heartbeats to the coordination service; a process that stops (killed,
host lost) is declared dead after `heartbeat_timeout_s` (default HEARTBEAT_TIMEOUT_S) and the service then
fails every other process, which exits non-zero (JAX aborts it) instead of waiting in a collective.
"""

from __future__ import annotations

import glob
import importlib.util
import logging
import os

import jax

HEARTBEAT_TIMEOUT_S = 30
_SLURM = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID", "SLURM_LOCALID")
_TPU_HOSTS = ("TPU_WORKER_HOSTNAMES", "TPU_PROCESS_ADDRESSES", "MEGASCALE_COORDINATOR_ADDRESS")


def detect(env: dict | None = None) -> str | None:
    """The multi-process cluster environment this process runs in ('slurm', 'ompi', 'tpu', 'k8s'), or None
    (none, or a job of one process)."""
    env = os.environ if env is None else env
    if all(k in env for k in _SLURM):
        return "slurm" if int(env["SLURM_NTASKS"]) > 1 else None
    if "OMPI_MCA_orte_hnp_uri" in env:  # set only under mpirun / mpiexec
        return "ompi" if int(env.get("OMPI_COMM_WORLD_SIZE", "2")) > 1 else None
    hosts = next((env[k] for k in _TPU_HOSTS if env.get(k)), None)
    if hosts is not None:  # GKE TPU pods (JobSet), multi-slice
        return "tpu" if ("," in hosts or env.get("MEGASCALE_COORDINATOR_ADDRESS")) else None
    if env is os.environ and _on_cloud_tpu_vm():  # GCE TPU VM: JAX reads the workers from the metadata server
        return "tpu"
    if "KUBERNETES_SERVICE_HOST" in env and importlib.util.find_spec("kubernetes") is not None:
        return "k8s"
    return None


def _on_cloud_tpu_vm() -> bool:
    """TPU chips on this host (Cloud TPU VM: /dev/accel* or /dev/vfio) and libtpu installed."""
    chips = glob.glob("/dev/accel[0-9]*") or glob.glob("/dev/vfio/[0-9]*")
    return bool(chips) and importlib.util.find_spec("libtpu") is not None


def initialize(coordinator_address: str | None = None, num_processes: int | None = None, process_id: int | None = None,
               *, auto: bool = True, heartbeat_timeout_s: int = HEARTBEAT_TIMEOUT_S) -> str | None:
    """Starts jax.distributed as described in the module docstring; returns how ('explicit', the detected
    cluster's name) or None for a single process. Call before any device is used."""
    if jax.distributed.is_initialized():
        return "already"
    env = os.environ
    num = num_processes or int(env.get("JAX_NUM_PROCESSES", "1"))
    if num > 1:
        address = coordinator_address or env.get("JAX_COORDINATOR_ADDRESS")
        index = process_id if process_id is not None else env.get("JAX_PROCESS_ID")
        if not address or index is None:
            raise ValueError(f"{num} processes asked for: give --coordinator_address and --process_id "
                             f"(or JAX_COORDINATOR_ADDRESS and JAX_PROCESS_ID)")
        jax.distributed.initialize(address, num_processes=num, process_id=int(index),
                                   heartbeat_timeout_seconds=heartbeat_timeout_s)
        return "explicit"
    kind = detect() if auto else None
    if kind is None:
        return None
    logging.getLogger("flamingo_jax").info("cluster environment %s: jax.distributed.initialize()", kind)
    jax.distributed.initialize(heartbeat_timeout_seconds=heartbeat_timeout_s)
    return kind


def barrier(name: str) -> None:
    """All processes meet here (a no-op in a single process): multihost_utils.sync_global_devices."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)
