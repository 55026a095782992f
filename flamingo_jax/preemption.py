"""Preemption: SIGTERM / SIGINT finish the step, save and stop (one process or many)."""

import logging as pylogging
import os
import signal

import jax


class Preemption:
    """SIGTERM / SIGINT ask the loop to finish its step, save and stop.

    One process: Python handlers set a flag (a second SIGINT interrupts at once). Several processes: JAX's
    preemption service (started by jax.distributed) owns SIGTERM and agrees on a step every process reaches
    (multihost_utils.reached_preemption_sync_point), so all save the same step; SIGINT is turned into a
    SIGTERM to join that protocol."""

    def __init__(self):
        self.flag = False
        self.signal_name = ""
        self.multi = jax.process_count() > 1
        self._old = {}
        signals = (signal.SIGINT, ) if self.multi else (signal.SIGTERM, signal.SIGINT)
        for sig in signals:
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: no handlers, no preemption checkpoints
                pass

    def _handle(self, signum, frame) -> None:
        if self.multi:
            os.kill(os.getpid(), signal.SIGTERM)
            return
        if self.flag and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.flag, self.signal_name = True, signal.Signals(signum).name
        pylogging.getLogger("flamingo_jax").warning("%s received: finishing the step, then saving", self.signal_name)

    def reached(self, step: int) -> bool:
        """Whether to save and stop after `step` updates (called after every step, on every process)."""
        if not self.multi:
            return self.flag
        from jax.experimental import multihost_utils
        try:
            hit = multihost_utils.reached_preemption_sync_point(step)
        except RuntimeError:  # preemption service disabled
            return False
        if hit:
            self.flag, self.signal_name = True, self.signal_name or "SIGTERM"
        return hit

    def restore_handlers(self) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old = {}
