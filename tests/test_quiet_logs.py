"""Orbax's INFO chatter is dropped from a run's log (its warnings stay), and a read-only restore prints none of
Orbax's read-only warnings."""

from __future__ import annotations

import logging
import os

from flamingo_jax import checkpoint


def _record(path: str, level: int) -> logging.LogRecord:
    return logging.LogRecord("absl", level, path, 1, "message %s", ("x", ), None)


def test_orbax_info_is_dropped_and_its_warnings_kept(monkeypatch):
    monkeypatch.delenv("ORBAX_INFO", raising=False)
    checkpoint.quiet_orbax_info()
    absl_logger = logging.getLogger("absl")
    orbax_file = os.path.join(os.sep, "site-packages", "orbax", "checkpoint", "checkpoint_manager.py")
    assert not absl_logger.filter(_record(orbax_file, logging.INFO))
    assert absl_logger.filter(_record(orbax_file, logging.WARNING))
    assert absl_logger.filter(_record(os.path.join(os.sep, "flamingo_jax", "train.py"), logging.INFO))


def test_read_only_manager_logs_no_warning(tmp_path, caplog):
    (tmp_path / "checkpoints").mkdir()
    with caplog.at_level(logging.INFO, logger="absl"):
        manager = checkpoint.read_only_manager(str(tmp_path / "checkpoints"), {})
        assert manager.all_steps() == []
        manager.close()
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
