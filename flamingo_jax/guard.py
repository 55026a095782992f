"""The trainer's guard: which steps are unhealthy, when the run stops or rolls back, and what it remembers.

config.guard fields (guard_config):
  max_bad_steps     skipped updates in a row (train_step's health check) that end the run or roll it back
  max_update_ratio  an update whose global norm exceeds this x the trainable params' global norm is skipped
                    (train_step module docstring; 0 disables the test)
  spike_factor      a loss above spike_factor x the running median of the last `spike_window` healthy losses
                    is a spike (0: off, the default: tiny runs' losses fall too fast for a median)
  spike_steps       that many spikes in a row are a loss spike
  spike_window      healthy losses in the running median; spike_min_history of them before any test
  rollback          on a streak of max_bad_steps or a loss spike, restore the last healthy checkpoint and go on
                    (False: stop with the reason)
  max_rollbacks     rollbacks allowed in one run; one more stops it
  skip_batches      after a rollback, skip this many batches of data (advancing the iterator, so its saved
                    state includes the skip)
  lr_factor         after a rollback, multiply the learning rate by this ...
  lr_factor_steps   ... for this many steps (0: not at all)

This is the by-hand practice of the large-model reports made automatic: PaLM (Chowdhery et al., 2022,
Section 5.1) restarted about 100 steps before each loss spike and skipped 200-500 batches; OPT (Zhang et al.,
2022, Section 2.5) and IDEFICS (HuggingFace, 2023, training notes) restarted from an earlier checkpoint with
a lower learning rate.

While the run is unhealthy (an update skipped in the current streak, or a spike in progress) the trainer
saves nothing, so every checkpoint holds params that passed the check: a resume never inherits a streak.
The guard's own state (recent losses, the rollback count, the lowered-lr window) is saved in each
checkpoint's meta item, so a resumed or repeated run takes the same decisions.
"""

from __future__ import annotations

import collections
from typing import Any

import ml_collections
import numpy as np

from flamingo_jax.train_step import skip_reasons

# The step metrics the guard reads every step (a few scalars: one small device-to-host copy).
METRICS = ("loss", "skipped", "skipped_run", "update_norm", "update_ratio")

_DEFAULTS = dict(max_bad_steps=10, max_update_ratio=1.0, spike_factor=0.0, spike_steps=5, spike_window=100,
                 spike_min_history=20, rollback=False, max_rollbacks=3, skip_batches=0, lr_factor=1.0,
                 lr_factor_steps=0)


def guard_config(**overrides: Any) -> ml_collections.ConfigDict:
    """config.guard with the defaults above (see the module docstring)."""
    c = ml_collections.ConfigDict(dict(_DEFAULTS))
    c.update(overrides)
    return c


def resolve(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """config.guard with defaults for fields a config does not set (configs written before the guard)."""
    given = config.get("guard", None) or {}
    return guard_config(**{k: given[k] for k in given})


def check(c: ml_collections.ConfigDict) -> None:
    """ValueError (one line) for guard settings that cannot work."""
    if int(c.max_bad_steps) < 1:
        raise ValueError(f"guard.max_bad_steps must be >= 1, not {c.max_bad_steps}")
    for name in ("max_update_ratio", "spike_factor", "skip_batches", "lr_factor_steps", "max_rollbacks"):
        if float(c[name]) < 0:
            raise ValueError(f"guard.{name} must be >= 0, not {c[name]}")
    if float(c.spike_factor) and float(c.spike_factor) <= 1:
        raise ValueError(f"guard.spike_factor must be > 1 (or 0: off), not {c.spike_factor}")
    if float(c.spike_factor) and (int(c.spike_steps) < 1 or int(c.spike_window) < 1):
        raise ValueError("guard.spike_steps and guard.spike_window must be >= 1")
    if not 0 < float(c.lr_factor):
        raise ValueError(f"guard.lr_factor must be > 0, not {c.lr_factor}")


class Guard:
    """The host side of the health check: reads each step's METRICS and says whether the run is in trouble."""

    def __init__(self, c: ml_collections.ConfigDict):
        self.c = c
        self.losses: collections.deque = collections.deque(maxlen=max(int(c.spike_window), 1))
        self.spike_run = 0  # spikes in a row
        self.streak = 0  # skipped updates in a row (the state's nonfinite_run)
        self.rollbacks = 0
        self.lr_until = 0  # updates with index < lr_until run at lr x lr_factor
        self.last: dict = {}
        self.trouble = ""  # "" | "streak" | "spike"

    # -- what checkpoints hold -------------------------------------------------------------------------

    def state_dict(self) -> dict:
        return {"losses": [float(x) for x in self.losses], "rollbacks": self.rollbacks, "lr_until": self.lr_until}

    def load(self, d: dict | None, *, rollbacks: int | None = None) -> None:
        """Back to a checkpoint's guard state (a healthy one: no streak, no spike). `rollbacks` keeps the
        current count instead of the checkpoint's (a rollback must not forget the rollbacks before it)."""
        d = d or {}
        self.losses.clear()
        self.losses.extend(float(x) for x in d.get("losses", []))
        self.rollbacks = int(d.get("rollbacks", 0)) if rollbacks is None else rollbacks
        self.lr_until = int(d.get("lr_until", 0))
        self.spike_run = self.streak = 0
        self.trouble = ""

    # -- per step --------------------------------------------------------------------------------------

    def lr_scale(self, step: int) -> float:
        """The learning-rate factor of the update with index `step` (0-based)."""
        return float(self.c.lr_factor) if step < self.lr_until else 1.0

    @property
    def healthy(self) -> bool:
        return self.streak == 0 and self.spike_run == 0

    def observe(self, m: dict) -> str:
        """Takes one step's METRICS (host values); returns "" or the trouble: "streak" or "spike"."""
        self.last = m
        self.streak = int(m["skipped_run"])
        loss = float(m["loss"])
        factor = float(self.c.spike_factor)
        if int(m["skipped"]) == 0:
            history = len(self.losses) >= max(int(self.c.spike_min_history), 1)
            if factor and history and loss > factor * float(np.median(self.losses)):
                self.spike_run += 1
            else:
                self.spike_run = 0
                self.losses.append(loss)
        self.trouble = ""
        if self.streak >= int(self.c.max_bad_steps):
            self.trouble = "streak"
        elif factor and self.spike_run >= int(self.c.spike_steps):
            self.trouble = "spike"
        return self.trouble

    def describe(self, step: int) -> str:
        """What went wrong at `step`, in one sentence (for the trouble observe() returned)."""
        m = self.last
        if self.trouble == "spike":
            return (f"loss spike at step {step}: the loss was above guard.spike_factor={self.c.spike_factor:g} x "
                    f"its running median {float(np.median(self.losses)):.4g} for {self.spike_run} steps in a row "
                    f"(last {float(m['loss']):.4g}); those updates were applied")
        reason = skip_reasons(int(m["skipped"]), float(m["update_norm"]), float(m["update_ratio"]),
                              float(self.c.max_update_ratio))
        return (f"{self.streak} updates in a row were skipped by the health check at step {step} (last: {reason}); "
                f"none of them changed the params")

    def can_roll_back(self) -> bool:
        return bool(self.c.rollback) and self.rollbacks < int(self.c.max_rollbacks)
