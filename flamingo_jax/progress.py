"""One progress line with a rate and an ETA, shared by the trainer, the pretraining loop and the eval harness:

    [train] step 120/600 (20%)  3.1 steps/s  loss 2.345  ETA 2:34

    prog = Progress("[train] step", total=600, start=done_before, unit="steps")
    prog.count(1)                  # one more done (no printing, no clock read)
    if prog.due():                 # `every` seconds since the last line
        prog.show(loss=2.345)      # prints the line (and resets the clock)
    prog.update(n, **values)       # count(n), then show() when due or when everything is done

The rate is measured since the previous line (the first one includes start-up / compilation), the ETA is the
work left at that rate. Lines go to `stream` (default: sys.stdout at the time of printing), flushed; nothing
is printed when `enabled` is false.
"""

from __future__ import annotations

import math
import sys
import time
from typing import Any, TextIO


def format_eta(seconds: float) -> str:
    """m:ss, or h:mm:ss from an hour on; '?' when unknown."""
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    s = int(round(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def _value(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


class Progress:
    """Counts work done towards `total` and prints one line per `show` (see the module docstring)."""

    def __init__(self, label: str, total: int, *, start: int = 0, unit: str = "steps", every: float = 10.0,
                 enabled: bool = True, stream: TextIO | None = None):
        self.label, self.total, self.unit, self.every = label, int(total), unit, float(every)
        self.enabled, self.stream = enabled, stream
        self.done = int(start)
        self._last_time, self._last_done = time.monotonic(), self.done

    def count(self, n: int = 1) -> None:
        self.done += n

    def due(self) -> bool:
        return self.enabled and time.monotonic() - self._last_time >= self.every

    def line(self, **values: Any) -> str:
        now = time.monotonic()
        rate = (self.done - self._last_done) / max(now - self._last_time, 1e-9)
        eta = (self.total - self.done) / rate if rate > 0 else (0.0 if self.done >= self.total else math.inf)
        pct = 100.0 * self.done / max(self.total, 1)
        extra = "".join(f"  {k} {_value(v)}" for k, v in values.items())
        return (f"{self.label} {self.done}/{self.total} ({pct:.0f}%)  {rate:.3g} {self.unit}/s{extra}  "
                f"ETA {format_eta(eta)}")

    def show(self, **values: Any) -> None:
        """Prints the line now (if enabled) and starts the next rate window."""
        if self.enabled:
            print(self.line(**values), file=self.stream or sys.stdout, flush=True)
        self._last_time, self._last_done = time.monotonic(), self.done

    def update(self, n: int = 1, **values: Any) -> None:
        self.count(n)
        if self.due() or (self.enabled and self.done >= self.total):
            self.show(**values)
