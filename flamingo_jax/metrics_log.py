"""A run's scalars, logged where every program of the project logs them: DIR/metrics.jsonl (one JSON object per log
step; flamingo_jax.files.read_metrics reads it back) and TensorBoard event files in DIR. The Flamingo trainer, the
seed-batched trainer and the towers' pretraining all write through it."""

from __future__ import annotations

import json
import os

import jax
from absl import logging


class MetricsLog:
    """metrics.jsonl + TensorBoard event files, written by process 0 only.

    The event files are written with tensorboardX, not clu's metric writers: clu.metric_writers imports
    TensorFlow when imported (its SummaryWriter is tf.summary), and a base install trains without TensorFlow
    (pyproject.toml); tensorboardX writes the same event files with protobuf alone."""

    def __init__(self, workdir: str, total_steps: int):
        del total_steps  # the progress line and its rate are flamingo_jax.progress's (in the training loop)
        self.primary = jax.process_index() == 0
        self.writer = None
        if self.primary:
            from tensorboardX import SummaryWriter

            self.writer = SummaryWriter(workdir)
        self.jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a") if self.primary else None

    def write(self, step: int, scalars: dict) -> None:
        if self.writer is not None:
            for name, value in scalars.items():
                self.writer.add_scalar(name, value, step)
        if self.jsonl:
            self.jsonl.write(json.dumps({"step": step, **scalars}) + "\n")
            self.jsonl.flush()

    def close(self) -> None:
        """Flushes and closes both (a full disk here is reported by the caller, not again)."""
        try:
            if self.writer is not None:
                self.writer.close()
        except Exception:  # noqa: BLE001 - e.g. ENOSPC while flushing; the run's error says what failed
            logging.warning("closing the TensorBoard writer failed", exc_info=False)
        if self.jsonl:
            try:
                self.jsonl.close()
            except OSError:
                pass
