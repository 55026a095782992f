"""Issue 14: training that cannot be silently damaged.

The guard (flamingo_jax.guard, train_step's health check): lr=1e9 from step 10 of a tiny run never writes a
checkpoint with exploded params; with rollback it restores, lowers the lr and skips data, deterministically;
without, it stops with a true message and a rerun with a sane lr resumes from the healthy checkpoint.
Verified checkpoints: a flipped byte in a step checkpoint is found on restore and the run falls back.
Storage: a failed save (a full tmpfs, or ENOSPC injected) is one error line naming the path; the previous
checkpoints stay intact and the rerun is bit-exact. CLI errors: one line, rc 1, within 10 s, nothing written.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from flamingo_jax import checkpoint
from flamingo_jax.checkpoint import data_state
from flamingo_jax.train import TrainingError, train
from flamingo_jax.train_step import init_state
from tiny import tiny_train_config

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")

# ---------------------------------------------------------------------------------------------------------
# The trainer on the tiny config: healthy for 10 steps, then lr=1e9.


def _config(total_steps: int, lr: float = 1e-3, **guard):
    c = tiny_train_config(total_steps=total_steps)
    c.checkpoint_every, c.log_every, c.optimizer.lr = 5, 5, lr
    for k, v in guard.items():
        c.guard[k] = v
    return c


def _rows(workdir: Path) -> list[dict]:
    """metrics.jsonl's rows; a last line without its newline is a write the full disk cut short, not a row."""
    text = (workdir / "metrics.jsonl").read_text()
    complete = text if text.endswith("\n") or not text else text[:text.rfind("\n") + 1]
    return [json.loads(l) for l in complete.splitlines()]


def _steps(workdir: Path) -> list[int]:
    return sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())


def _trainable(workdir: Path, step: int) -> dict:
    """The step checkpoint's trainable params and its meta (read without the trainer)."""
    import orbax.checkpoint as ocp

    path = workdir / "checkpoints" / str(step)
    state = ocp.StandardCheckpointer().restore(path / "state")
    return state["trainable"]


def _norm(tree) -> float:
    return float(np.sqrt(sum(np.sum(np.square(np.asarray(x, np.float64))) for x in jax.tree.leaves(tree))))


def _assert_equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.fixture(scope="module")
def healthy(tmp_path_factory):
    """A workdir trained 10 healthy steps (checkpoints 5 and 10), and the uninterrupted 20-step run."""
    cache = tmp_path_factory.mktemp("jax_cache")
    jax.config.update("jax_compilation_cache_dir", str(cache))  # the runs below compile the same steps
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    base = tmp_path_factory.mktemp("healthy10")
    train(_config(10), str(base))
    full = tmp_path_factory.mktemp("uninterrupted20")
    train(_config(20), str(full))
    return base, full


def _copy(base: Path, tmp_path: Path) -> Path:
    out = tmp_path / "run"
    shutil.copytree(base, out)
    return out


def test_lr_1e9_without_rollback_stops_truthfully_and_a_sane_rerun_resumes(healthy, tmp_path):
    base, full = healthy
    workdir = _copy(base, tmp_path)
    with pytest.raises(TrainingError) as err:
        train(_config(20, lr=1e9), str(workdir))
    message = str(err.value)
    assert "10 updates in a row were skipped" in message and "none of them changed the params" in message
    assert "guard.max_update_ratio" in message and "nothing was saved after step 10" in message
    assert "last healthy checkpoint is step 10" in message
    # step 11 was finite but destructive: skipped by the norm test, not applied
    rows = {r["step"]: r for r in _rows(workdir) if "loss" in r}
    assert rows[15]["skipped"] == 4 and rows[15]["update_ratio"] > 1e6
    assert _steps(workdir) == [5, 10]  # nothing written during the streak
    for s in _steps(workdir):
        t = _trainable(workdir, s)
        assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(t)) and _norm(t) < 100
    # a rerun with a sane lr resumes from 10 (no inherited streak) and equals the uninterrupted run bitwise
    train(_config(20), str(workdir))
    assert _steps(workdir)[-1] == 20
    _assert_equal(_trainable(workdir, 20), _trainable(full, 20))


def _rollback_run(base: Path, tmp_path: Path, name: str) -> Path:
    workdir = tmp_path / name
    shutil.copytree(base, workdir)
    train(_config(20, lr=1e9, rollback=True, max_bad_steps=3, lr_factor=1e-12, lr_factor_steps=100, skip_batches=2),
          str(workdir))
    return workdir


def test_lr_1e9_with_rollback_restores_lowers_the_lr_skips_data_and_finishes_deterministically(healthy, tmp_path):
    base, _ = healthy
    a = _rollback_run(base, tmp_path, "a")
    rows = _rows(a)
    rollbacks = [r for r in rows if "rollback" in r]
    assert len(rollbacks) == 1 and rollbacks[0]["step"] == 13
    assert rollbacks[0]["rollback_to_step"] == 10 and rollbacks[0]["skipped_batches"] == 2
    assert rollbacks[0]["lr_factor"] == 1e-12
    after = [r for r in rows if "loss" in r and r["step"] > 13]
    assert after and all(r["skipped"] == 0 and np.isfinite(r["loss"]) for r in after)
    assert after[-1]["step"] == 20 and after[-1]["learning_rate"] == pytest.approx(1e9 * 1e-12)
    assert _steps(a)[-1] == 20
    for s in _steps(a):
        t = _trainable(a, s)
        assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(t)) and _norm(t) < 100
    meta = json.loads((a / "checkpoints" / "20" / "meta" / "metadata").read_text())
    assert meta["guard"]["rollbacks"] == 1 and meta["guard"]["lr_until"] == 110
    # the data was skipped through the iterator: the step-20 data state is 2 batches past the plain run's
    b = _rollback_run(base, tmp_path, "b")  # the same command again: the same rollback, bit for bit
    assert [r for r in _rows(b) if "rollback" in r][0]["rollback_to_step"] == 10
    assert [r["loss"] for r in _rows(b) if "loss" in r] == [r["loss"] for r in rows if "loss" in r]
    _assert_equal(_trainable(a, 20), _trainable(b, 20))


def test_a_fresh_run_at_lr_1e9_rolls_back_to_its_first_state_or_says_it_has_no_checkpoint(healthy, tmp_path):
    with pytest.raises(TrainingError, match="no checkpoint was written: rerun with a lower optimizer.lr"):
        train(_config(20, lr=1e9, max_bad_steps=3), str(tmp_path / "off"))
    assert not (tmp_path / "off" / "checkpoints").exists() or _steps(tmp_path / "off") == []
    on = tmp_path / "on"  # with rollback the run saves its first state, so there is one to go back to
    train(_config(12, lr=1e9, rollback=True, max_bad_steps=3, lr_factor=1e-12, lr_factor_steps=100), str(on))
    rollbacks = [r for r in _rows(on) if "rollback" in r]
    assert len(rollbacks) == 1 and rollbacks[0]["rollback_to_step"] == 0
    assert _steps(on)[-1] == 12 and _norm(_trainable(on, 12)) < 100


def test_rollbacks_are_limited(healthy, tmp_path):
    base, _ = healthy
    workdir = _copy(base, tmp_path)
    with pytest.raises(TrainingError, match="guard.max_rollbacks=1 rollbacks were used up"):
        train(_config(20, lr=1e9, rollback=True, max_bad_steps=2, max_rollbacks=1, skip_batches=1), str(workdir))
    assert _steps(workdir) == [5, 10]


# ---------------------------------------------------------------------------------------------------------
# Storage: a full disk.


def _mount_tmpfs(path: Path, size: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or not shutil.which("mount"):
        return False
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs",
                           str(path)], capture_output=True).returncode == 0


def test_disk_full_on_tmpfs_is_one_error_and_the_rerun_is_bit_exact(healthy, tmp_path, monkeypatch):
    _, full = healthy
    mnt = tmp_path / "small"
    checkpoint_bytes = sum(p.stat().st_size for p in (full / "checkpoints" / "20").rglob("*") if p.is_file())
    frozen_bytes = sum(p.stat().st_size for p in (full / "frozen").rglob("*") if p.is_file())
    # room for the frozen store, checkpoints 5 and 10 and a part of 15
    size = frozen_bytes + int(2.5 * checkpoint_bytes) + (256 << 10)
    if not _mount_tmpfs(mnt, str(size)):
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        workdir = mnt / "run"
        # the free-space check would refuse the save before writing: switch it off to hit the real ENOSPC
        monkeypatch.setattr(checkpoint.Checkpoints, "_check_space", lambda self, step, storable: None)
        start = time.monotonic()
        config = _config(20)
        config.log_every = 1
        # Which write meets the full disk first is a race: the background save of step 15 (reported by
        # check_errors after a step) or the metrics log (reported by the trainer). Both must be one line naming
        # the path, the cause and the last checkpoint; the asynchronous save's own report is pinned
        # deterministically by the injected-ENOSPC test below.
        with pytest.raises((checkpoint.CheckpointError, TrainingError)) as err:
            train(config, str(workdir))
        message = str(err.value)
        assert "\n" not in message and str(workdir) in message, message
        if isinstance(err.value, checkpoint.CheckpointError):
            assert "saving checkpoint 15" in message and str(workdir / "checkpoints") in message, message
            assert "disk is full" in message and "step 10 (untouched)" in message, message
        else:
            assert "writing the logs" in message and "No space left" in message, message
            assert "last checkpoint, step 10" in message, message
        last = max(r["step"] for r in _rows(workdir) if "loss" in r)
        assert 15 <= last <= 20, last
        assert time.monotonic() - start < 300
        assert _steps(workdir)[:2] == [5, 10]
        monkeypatch.undo()
        # space freed (the workdir moved to a disk with room): the rerun is bit-exact against the uninterrupted run
        moved = tmp_path / "moved"
        shutil.copytree(workdir, moved, ignore=shutil.ignore_patterns("*.orbax-checkpoint-tmp*"))
    finally:
        if subprocess.run(["umount", str(mnt)], capture_output=True).returncode:
            subprocess.run(["umount", "-l", str(mnt)], check=False)  # files still open: detach lazily
    shutil.rmtree(moved / "checkpoints" / "15", ignore_errors=True)  # a partial save, if it was left
    train(_config(20), str(moved))
    _assert_equal(_trainable(moved, 20), _trainable(full, 20))


def _toy_config(**kw):
    import ml_collections

    c = dict(checkpoint_every=2, checkpoint_every_minutes=0.0, checkpoint_keep=3, checkpoint_keep_every=0,
             checkpoint_async=True, pretrained=dict(vision="", lm=""), trainable=["a", "b"])
    c.update(kw)
    return ml_collections.ConfigDict(c)


FROZEN = {"lm": {"k": jnp.arange(9.0).reshape(3, 3)}}


def _toy_state(shift: float) -> dict:
    """A train state with one 64 KB array of random values (stored in its own zstd data file)."""
    r = np.random.default_rng(int(shift)).standard_normal((128, 128)).astype(np.float32)
    state = init_state({"a": jnp.asarray(r), "b": jnp.ones(4) * shift}, optax.adamw(1e-3), jax.random.key(7))
    state["opt_state"] = jax.tree.map(lambda x: x + shift if x.dtype == jnp.float32 else x, state["opt_state"])
    return {**state, "step": jnp.int32(shift)}


def _toy_checkpoints(path: Path) -> checkpoint.Checkpoints:
    ck = checkpoint.Checkpoints(path, _toy_config())
    _, ck.frozen_manifest = checkpoint.prepare_frozen(path, _toy_config(), FROZEN)
    return ck


@pytest.mark.parametrize("another_open", [False, True])
def test_an_injected_enospc_in_the_async_save_is_one_line_and_keeps_the_last_checkpoint(
        tmp_path, monkeypatch, another_open):
    # another_open: a Checkpoints of another workdir, created earlier in the process and never closed, must not
    # take the record of this one's failure (its log filter comes first in absl's chain)
    earlier = _toy_checkpoints(tmp_path / "earlier") if another_open else None
    tmp_path = tmp_path / "run"
    ck = _toy_checkpoints(tmp_path)
    ck.save(2, _toy_state(2.0), {"step": 2})
    ck.wait()

    async def full(self, x, directory):
        raise OSError(errno.ENOSPC, "No space left on device", str(directory))

    monkeypatch.setattr(data_state.DataStateHandler, "_save_fn", full)
    ck.save(4, _toy_state(4.0), {"step": 4})
    deadline = time.monotonic() + 60
    with pytest.raises(checkpoint.CheckpointError) as err:
        while time.monotonic() < deadline:  # what the trainer does after every step
            ck.check_errors()
            time.sleep(0.05)
    message = str(err.value)
    assert "\n" not in message and "saving checkpoint 4 to" in message and "disk is full" in message
    assert "step 2 (untouched)" in message
    ck.close()  # already reported: no second error
    if earlier is not None:
        earlier.close()
    monkeypatch.undo()
    restored = _toy_checkpoints(tmp_path).restore(_toy_state(0.0))
    assert restored.step == 2
    _assert_equal(restored.state["trainable"], _toy_state(2.0)["trainable"])


def test_too_little_free_space_is_refused_before_the_save(tmp_path, monkeypatch, caplog):
    ck = _toy_checkpoints(tmp_path)
    ck.save(2, _toy_state(2.0), {"step": 2})
    ck.wait()
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage._replace(free=500_000))
    with caplog.at_level(logging.WARNING):
        ck.save(4, _toy_state(4.0), {"step": 4})  # ~200 KB needed: fits, with a warning
    assert any("free in" in r.getMessage() for r in caplog.records)
    ck.wait()
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage._replace(free=1000))
    with pytest.raises(checkpoint.CheckpointError, match="not enough free space to save checkpoint 6.*step 4"):
        ck.save(6, _toy_state(6.0), {"step": 6})
    ck.close()
    assert _steps(tmp_path) == [2, 4]


# ---------------------------------------------------------------------------------------------------------
# Verified step checkpoints.


def test_checksums_see_one_changed_element_and_swapped_ones():
    state = _toy_state(1.0)
    base = checkpoint.checksums(state)
    changed = {**state, "trainable": {**state["trainable"], "a": state["trainable"]["a"].at[5, 7].add(3e-4)}}
    swapped = {**state, "trainable": {**state["trainable"], "a": state["trainable"]["a"][::-1]}}
    for other in (changed, swapped):
        diff = [k for k, v in checkpoint.checksums(other).items() if v != base[k]]
        assert diff == ["['trainable']['a']"]
    with pytest.raises(checkpoint.ChecksumMismatch, match="1 of"):
        checkpoint.verify_checksums(changed, base)
    checkpoint.verify_checksums(state, base)


def test_a_flipped_byte_in_a_step_checkpoint_is_found_and_the_run_falls_back(tmp_path, caplog):
    src = tmp_path / "src"
    ck = _toy_checkpoints(src)
    for s in (2, 4):
        ck.save(s, _toy_state(float(s)), {"step": s})
    ck.close()
    files = [p for p in (src / "checkpoints" / "4" / "state").rglob("*") if p.is_file()]
    data = max(files, key=lambda p: p.stat().st_size)  # the zstd data file of the 64 KB array
    assert data.stat().st_size > 30_000
    caught = {"checksum": 0, "read error": 0, "unchanged": 0}
    want = _toy_state(4.0)
    for i, f in enumerate(files):
        n = f.stat().st_size
        for pos in sorted({0, n // 3, n // 2, (2 * n) // 3, n - 1} | ({n // 7 * k
                                                                       for k in range(1, 7)} if f == data else set())):
            run = tmp_path / f"flip_{i}_{pos}"
            shutil.copytree(src, run)
            target = run / f.relative_to(src)
            raw = bytearray(target.read_bytes())
            raw[pos] ^= 0x10
            target.write_bytes(bytes(raw))
            caplog.clear()
            with caplog.at_level(logging.WARNING):
                restored = _toy_checkpoints(run).restore(_toy_state(0.0))
            messages = " ".join(r.getMessage() for r in caplog.records)
            if restored.step == 2:  # found: moved aside, the previous step restored
                assert "damaged" in messages and not (run / "checkpoints" / "4").exists()
                caught["checksum" if "checksum mismatch" in messages else "read error"] += 1
                _assert_equal(restored.state["trainable"], _toy_state(2.0)["trainable"])
            else:  # a byte the restored state does not depend on (verified: the state is bit-identical)
                caught["unchanged"] += 1
                _assert_equal(restored.state["trainable"], want["trainable"])
                _assert_equal(restored.state["opt_state"], want["opt_state"])
    assert caught["checksum"] >= 3, caught  # the flips only the checksums see (zstd decodes them silently)


def test_the_damage_warning_is_one_readable_line():
    e = ValueError('DATA_LOSS: Error reading "x/.zarray": CRC-32C checksum verification failed '
                   "[source locations='tensorstore/kvstore/ocdbt/format/btree.cc:123\\ntensorstore/a.cc:1'] "
                   "[tensorstore_spec='{\"driver\": \"zarr\", \"kvstore\": {\"path\": \"/very/long\"}}'] " +
                   "<tensorstore.Spec object at 0x7f00deadbeef> " + "tail " * 200)
    line = checkpoint.one_line(e)
    assert "\n" not in line and "source locations" not in line and "tensorstore_spec" not in line
    assert line.startswith("ValueError: DATA_LOSS: Error reading") and line.endswith(" ...") and len(line) < 420


# ---------------------------------------------------------------------------------------------------------
# CLI errors: one line, rc 1, within 10 s, nothing created.


@pytest.mark.parametrize("args, expected", [
    ([], "--config is required"),
    (["--config.pretrained.lm=/no/such/converted/lm"], "/no/such/converted/lm does not exist"),
    (["--config.nosuchkey=3"], "the config has no field 'nosuchkey'"),
    (["--config.log_every=0"], "config.log_every must be > 0"),
    (["--config.total_steps=-5"], "config.total_steps must be > 0"),
    (["--config.checkpoint_every=-1"], "config.checkpoint_every must be >= 0"),
    (["--config.total_steps=many"], "--config.total_steps=many"),
    (["--config.guard.max_bad_steps=0"], "guard.max_bad_steps must be >= 1"),
    (["--config.mesh.data=3"], "config.mesh"),
])
def test_cli_errors_are_one_line_fast_and_create_nothing(tmp_path, args, expected):
    workdir = tmp_path / "never"
    config = [] if not args else ["--config", str(ROOT / "experiments/tiny.py")]
    # "Fast" means before anything is compiled, not a wall time (this machine's speed drifts 2x): with
    # JAX_LOG_COMPILES every compilation would log lines to stderr, and stderr must hold the one error line.
    out = subprocess.run([sys.executable, "-m", "flamingo_jax.train", "--workdir",
                          str(workdir), *config, *args], env=dict(os.environ, JAX_PLATFORMS="cpu",
                                                                  JAX_LOG_COMPILES="1"), capture_output=True, text=True,
                         cwd=ROOT, timeout=120)
    lines = [l for l in out.stderr.splitlines() if l.strip()]
    assert out.returncode == 1 and len(lines) == 1 and lines[0].startswith("error: "), out.stderr[-2000:]
    assert expected in lines[0]
    assert not workdir.exists()


# ---------------------------------------------------------------------------------------------------------
# The guard's host logic: loss spikes, its state in checkpoints.


def test_a_loss_spike_is_k_times_the_running_median_for_n_steps_and_makes_the_run_unhealthy():
    from flamingo_jax import guard as guard_lib

    g = guard_lib.Guard(guard_lib.guard_config(spike_factor=2.0, spike_steps=3, spike_window=10, spike_min_history=5))
    ok = dict(skipped=0, skipped_run=0, update_norm=0.1, update_ratio=1e-3)
    for loss in (10.0, 9.0, 11.0, 10.0, 9.5, 10.5):
        assert g.observe({**ok, "loss": loss}) == "" and g.healthy
    assert g.observe({**ok, "loss": 25.0}) == "" and not g.healthy  # one spike: not yet trouble, not saved
    assert g.observe({**ok, "loss": 10.0}) == "" and g.healthy  # back: the spike run resets
    assert [g.observe({**ok, "loss": 30.0}) for _ in range(3)] == ["", "", "spike"]
    assert "loss spike at step 9" in g.describe(9) and "median 10" in g.describe(9)
    # the spikes never entered the median's window; a checkpoint's guard state brings back the same decisions
    assert max(g.state_dict()["losses"]) == 11.0
    h = guard_lib.Guard(g.c)
    h.load(g.state_dict(), rollbacks=2)
    assert h.healthy and h.rollbacks == 2 and list(h.losses) == list(g.losses)
    h.lr_until = 12
    assert h.lr_scale(11) == g.c.lr_factor and h.lr_scale(12) == 1.0


def test_a_streak_is_trouble_at_max_bad_steps_and_says_why():
    from flamingo_jax import guard as guard_lib
    from flamingo_jax.train_step import SKIP_NONFINITE_GRADS, SKIP_UPDATE_TOO_LARGE

    g = guard_lib.Guard(guard_lib.guard_config(max_bad_steps=2))
    bad = dict(loss=5.0, skipped=SKIP_UPDATE_TOO_LARGE, update_norm=4e9, update_ratio=8e7)
    assert g.observe({**bad, "skipped_run": 1}) == "" and not g.healthy
    assert g.observe({**bad, "skipped_run": 2}) == "streak"
    assert "2 updates in a row were skipped" in g.describe(7) and "guard.max_update_ratio=1" in g.describe(7)
    g.observe({**bad, "skipped": SKIP_NONFINITE_GRADS, "loss": float("nan"), "skipped_run": 3})
    assert "the loss or the gradient was not finite" in g.describe(8)
    with pytest.raises(ValueError, match="guard.max_bad_steps"):
        guard_lib.check(guard_lib.guard_config(max_bad_steps=0))
    with pytest.raises(ValueError, match="guard.spike_factor"):
        guard_lib.check(guard_lib.guard_config(spike_factor=0.5))
