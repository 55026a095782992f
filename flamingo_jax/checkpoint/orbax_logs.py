"""Orbax's logging, made quiet: its INFO lines off, the read-only manager's notice dropped, and a failed
background save's exception kept for one clear error instead of its tracebacks."""

from __future__ import annotations

import logging as pylogging
import os
import weakref

import orbax.checkpoint as ocp


class _OrbaxInfoOff(pylogging.Filter):
    """Orbax logs dozens of INFO lines per save and restore (threads, throughput, renames) through absl; a run
    shows its own progress line, so Orbax's records below WARNING are dropped (its warnings and errors stay).
    ORBAX_INFO=1 keeps them."""

    def filter(self, record: pylogging.LogRecord) -> bool:
        return record.levelno >= pylogging.WARNING or f"{os.sep}orbax{os.sep}" not in record.pathname


_ORBAX_INFO_OFF = _OrbaxInfoOff()


def quiet_orbax_info() -> None:
    """Installs _OrbaxInfoOff on absl's logger and its handlers (once; a no-op with ORBAX_INFO=1)."""
    if os.environ.get("ORBAX_INFO") == "1":
        return
    absl_logger = pylogging.getLogger("absl")
    for target in [absl_logger, *absl_logger.handlers]:
        if _ORBAX_INFO_OFF not in target.filters:
            target.addFilter(_ORBAX_INFO_OFF)


quiet_orbax_info()  # at import: Orbax handlers log INFO from their constructors, before any manager exists


class _DropReadOnlyNotice(pylogging.Filter):
    """Orbax logs 'Given directory is read only=DIR' as a warning for every read-only CheckpointManager;
    reading a finished run's checkpoints is the normal case of one, so that line is dropped."""

    def filter(self, record: pylogging.LogRecord) -> bool:
        return not str(record.msg).startswith("Given directory is read only=")


def read_only_manager(directory: str, item_handlers: dict) -> ocp.CheckpointManager:
    """A CheckpointManager that reads and never writes, created without Orbax's warnings (the options a
    read-only manager forces are given explicitly, so none is 'set' with a warning)."""
    quiet_orbax_info()
    options = ocp.CheckpointManagerOptions(read_only=True, create=False, save_interval_steps=0)
    drop = _DropReadOnlyNotice()
    absl_logger = pylogging.getLogger("absl")
    absl_logger.addFilter(drop)
    try:
        return ocp.CheckpointManager(directory, options=options, item_handlers=item_handlers)
    finally:
        absl_logger.removeFilter(drop)


class _OrbaxFailures(pylogging.Filter):
    """Keeps the exception of the last failed background save that Orbax logged (logging.exception in its
    finalize thread), and keeps those tracebacks (one per failed array write) off the console: the trainer
    reports the failure once, as one line (Checkpoints.check_errors).

    Every Checkpoints of the process installs one on absl's logger, and the first in the logger's chain that
    drops a record hides it from the others; so each captured failure is given to every live instance (a
    Checkpoints left open earlier in the process, e.g. by a test, would otherwise take the record of a later
    one's failure, which then reported only "the save ended without writing the step directory")."""

    _live: "weakref.WeakSet[_OrbaxFailures]" = weakref.WeakSet()

    def __init__(self):
        super().__init__()
        self.last: BaseException | None = None
        self.logger = pylogging.getLogger("absl")
        self.logger.addFilter(self)
        _OrbaxFailures._live.add(self)

    def filter(self, record: pylogging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[1] is not None and "orbax" in (record.pathname or ""):
            cause = _root_cause(record.exc_info[1])
            for live in list(_OrbaxFailures._live):
                live.last = cause
            return False
        return True

    def remove(self) -> None:
        self.logger.removeFilter(self)
        _OrbaxFailures._live.discard(self)


def _root_cause(e: BaseException) -> BaseException:
    """The innermost exception of a chain (ENOSPC rather than the wrappers around it)."""
    seen = set()
    while id(e) not in seen:
        seen.add(id(e))
        nxt = e.__cause__ or e.__context__
        if nxt is None:
            break
        e = nxt
    return e
