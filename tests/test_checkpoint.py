"""Checkpoints: exact resumption through SIGKILLs and SIGTERM, restore on other meshes, damaged checkpoints,
frozen-hash checks, retention, export, and the bytes a step checkpoint costs (against the arrays the trainer
saved).

The fast tests use a small hand-made train state (no model compile). The slow ones run the trainer in
subprocesses (tiny model, synthetic data) that share one persistent compilation cache, so only the first
process compiles; run this file alone as `python tests/test_checkpoint.py train WORKDIR JSON` to drive one.
"""

from __future__ import annotations

import json
import logging
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from flamingo_jax import checkpoint, train_state
from flamingo_jax.train_step import init_state

ROOT = Path(__file__).parents[1]
# After a failed restore Orbax's reader thread may post to its closed event loop: harmless, but pytest reports it.
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")

# ---------------------------------------------------------------------------------------------------------
# Fast: a hand-made state.


def _toy_config(**kw) -> ml_collections.ConfigDict:
    c = dict(checkpoint_every=2, checkpoint_every_minutes=0.0, checkpoint_keep=2, checkpoint_keep_every=0,
             checkpoint_async=True, pretrained=dict(vision="", lm=""), trainable=["a/.*", "b"])
    c.update(kw)
    return ml_collections.ConfigDict(c)


def _toy_state(shift: float = 0.0) -> dict:
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-3))
    trainable = {"a": {"w": jnp.arange(6.0).reshape(2, 3) + shift}, "b": jnp.ones(4) * shift}
    state = init_state(trainable, tx, jax.random.key(7))
    state["opt_state"] = jax.tree.map(lambda x: x + shift if x.dtype == jnp.float32 else x, state["opt_state"])
    return {**state, "step": jnp.int32(shift)}


FROZEN = {"lm": {"k": jnp.arange(9.0).reshape(3, 3)}, "vision": {"v": jnp.ones(2)}}


def _saved(tmp_path, steps=(2, 4, 6), **kw):
    config = _toy_config(**kw)
    ck = checkpoint.Checkpoints(tmp_path, config)
    _, ck.frozen_manifest = checkpoint.prepare_frozen(tmp_path, config, FROZEN)
    for s in steps:
        ck.save(s, _toy_state(float(s)), {"step": s})
    ck.close()
    return config


def _reopen(tmp_path, config):
    ck = checkpoint.Checkpoints(tmp_path, config)
    _, ck.frozen_manifest = checkpoint.prepare_frozen(tmp_path, config, FROZEN)
    return ck


def _assert_tree_equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_restore_gives_back_the_state_and_the_data_position(tmp_path):
    config = _saved(tmp_path)
    restored = _reopen(tmp_path, config).restore(_toy_state())
    assert restored.step == 6 and restored.data_state == {"step": 6}
    want = _toy_state(6.0)
    _assert_tree_equal(jax.random.key_data(restored.state["rng"]), jax.random.key_data(want["rng"]))
    _assert_tree_equal({k: v
                        for k, v in restored.state.items() if k != "rng"},
                       {k: v
                        for k, v in want.items() if k != "rng"})
    meta = restored.meta
    assert meta["step"] == 6 and meta["versions"]["orbax-checkpoint"] and meta["config"]["checkpoint_keep"] == 2
    assert meta["frozen_fingerprint"] == json.loads((tmp_path / "frozen" / "manifest.json").read_text())["fingerprint"]


def test_data_state_is_json_per_process_with_bytes_and_numpy_scalars(tmp_path):
    config = _toy_config()
    ck = checkpoint.Checkpoints(tmp_path, config)
    _, ck.frozen_manifest = checkpoint.prepare_frozen(tmp_path, config, FROZEN)
    ck.save(2, _toy_state(2.0), {"grain": b"\x00state", "step": np.int64(2), "counts": [np.float32(0.5)]})
    ck.close()
    assert (tmp_path / "checkpoints" / "2" / "data" / "process_0.json").is_file()
    restored = _reopen(tmp_path, config).restore(_toy_state())
    assert restored.data_state == {"grain": b"\x00state", "step": 2, "counts": [0.5]}


def test_keeps_the_newest_k_plus_every_nth(tmp_path):
    _saved(tmp_path, steps=(2, 4, 6, 8, 10, 12), checkpoint_keep=2, checkpoint_keep_every=4)
    assert sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()) == [4, 8, 10, 12]


@pytest.mark.parametrize("damage", ["truncate", "missing"])
def test_a_damaged_newest_checkpoint_falls_back_to_the_previous_one(tmp_path, caplog, damage):
    config = _saved(tmp_path)
    newest = tmp_path / "checkpoints" / "6"
    if damage == "truncate":  # every data file of the state cut in half, as by a full disk
        files = [p for p in (newest / "state").rglob("*") if p.is_file() and "d" in p.parent.name.split("/")]
        files = files or [p for p in (newest / "state").rglob("*") if p.is_file() and p.stat().st_size > 64]
        for p in files:
            p.write_bytes(p.read_bytes()[:p.stat().st_size // 2])
    else:
        for p in (newest / "state").rglob("*"):
            if p.is_file() and p.name != "_METADATA":
                p.unlink()
    with caplog.at_level(logging.WARNING):
        restored = _reopen(tmp_path, config).restore(_toy_state())
    assert restored.step == 4 and restored.data_state == {"step": 4}
    assert any("damaged" in r.getMessage() for r in caplog.records)
    assert not newest.exists() and list((tmp_path / "checkpoints_damaged").iterdir())  # aside, not deleted
    _assert_tree_equal(restored.state["trainable"], _toy_state(4.0)["trainable"])


def test_no_intact_checkpoint_is_an_error_that_deletes_nothing(tmp_path):
    config = _saved(tmp_path, steps=(2, ))
    for p in (tmp_path / "checkpoints" / "2" / "state").rglob("*"):
        if p.is_file() and p.name != "_METADATA":
            p.unlink()
    with pytest.raises(checkpoint.CheckpointError, match="no intact checkpoint"):
        _reopen(tmp_path, config).restore(_toy_state())
    assert (tmp_path / "checkpoints" / "2").exists()


def test_a_checkpoint_of_another_model_is_a_config_error_not_damage(tmp_path):
    config = _saved(tmp_path, steps=(2, ))
    other = _toy_state()
    other["trainable"] = {**other["trainable"], "b": jnp.ones(5)}
    other["opt_state"] = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-3)).init(other["trainable"])
    with pytest.raises(checkpoint.CheckpointError, match="does not fit the current config"):
        _reopen(tmp_path, config).restore(other)


def test_frozen_params_are_stored_once_and_a_hash_mismatch_is_an_error(tmp_path):
    import orbax.checkpoint as ocp

    config = _saved(tmp_path, steps=(2, 4))
    manifest = json.loads((tmp_path / "frozen" / "manifest.json").read_text())
    assert {v["source"] for v in manifest["subtrees"].values()} == {"workdir"}
    assert not any((tmp_path / "checkpoints" / "4").rglob("*lm*"))  # step checkpoints hold no frozen params
    frozen, _ = checkpoint.prepare_frozen(tmp_path, config, jax.tree.map(jnp.zeros_like, FROZEN))
    _assert_tree_equal(frozen, FROZEN)  # on resume the stored frozen params win over a fresh init
    ckptr = ocp.StandardCheckpointer()  # someone overwrites them with other weights
    ckptr.save(tmp_path / "frozen" / "params", jax.tree.map(lambda x: x + 1, FROZEN), force=True)
    ckptr.wait_until_finished()
    with pytest.raises(checkpoint.CheckpointError, match="frozen hash mismatch for 'lm'"):
        checkpoint.prepare_frozen(tmp_path, config, FROZEN)


def test_frozen_params_from_a_converted_checkpoint_are_referenced_and_checked(tmp_path):
    from flamingo_jax.convert.store import Converted, save_converted

    def converted(name, value):
        return save_converted(
            str(tmp_path / name),
            Converted(kind="vision", params={"v": np.full(2, value, np.float32)},
                      config=ml_collections.ConfigDict({"width": 2}), source={"test": name}))

    first, second = converted("conv_a", 1.0), converted("conv_b", 2.0)
    work = tmp_path / "work"
    config = _toy_config(pretrained=dict(vision=first, lm=""))
    _, manifest = checkpoint.prepare_frozen(work, config, FROZEN)
    assert manifest["subtrees"]["vision"]["source"] == "pretrained"
    assert manifest["subtrees"]["vision"]["path"] == first
    assert not (work / "frozen" / "params" / "vision").exists()  # referenced, not copied
    checkpoint.prepare_frozen(work, config, FROZEN)  # same source: fine
    with pytest.raises(checkpoint.CheckpointError, match="frozen hash mismatch for 'vision'.*conv_a"):
        checkpoint.prepare_frozen(work, _toy_config(pretrained=dict(vision=second, lm="")), FROZEN)


def _print_bytes(name: str, config, capsys) -> None:
    b = train_state.checkpoint_bytes(config)
    # trainable fp32 + 2 Adam moments (+ a few counters and the rng): about 3x the trainable bytes
    assert 3 * b["trainable_params"] <= b["step_checkpoint"] < 3 * b["trainable_params"] + 1024
    assert b["full_tree"] == b["step_checkpoint"] + b["frozen_params"]
    with capsys.disabled():
        print(f"\ncheckpoint bytes {name}:", json.dumps(b))


def test_bytes_per_step_checkpoint_tiny(capsys):
    sys.path.insert(0, str(ROOT / "tests"))
    from tiny import tiny_train_config

    _print_bytes("tiny", tiny_train_config(), capsys)


BYTES_3B_SCRIPT = r"""
import json
from flamingo_jax.config_files import load_config
from flamingo_jax.train_state import checkpoint_bytes
print("BYTES " + json.dumps(checkpoint_bytes(load_config("experiments/flamingo_3b.py"))))
"""

# ---------------------------------------------------------------------------------------------------------
# Slow: the trainer in subprocesses.


def _run(cmd: list[str], env: dict, timeout: float = 900) -> str:
    proc = subprocess.run(cmd, env=env, cwd=ROOT, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-4000:]
    return proc.stdout


SMALL = dict(total_steps=28, checkpoint_every=4, checkpoint_keep=2)


def small_config(**kw) -> ml_collections.ConfigDict:
    """tests/tiny.py's train config, cut to one dataset and one layer per tower so it compiles quickly."""
    sys.path.insert(0, str(ROOT / "tests"))
    from tiny import tiny_train_config

    mesh = tuple(kw.pop("mesh", (-1, 1, 1)))
    config = tiny_train_config(mixture=("align", ), total_steps=kw.pop("total_steps", 24), mesh=mesh)
    config.model.vision.layers = 1
    config.model.resampler.depth = 1
    config.model.lm.num_layers = 1
    config.optimizer.warmup_steps = 2
    for k, v in kw.items():
        config[k] = v
    return config


# One persistent compilation cache for every subprocess of this file, kept between sessions: only the first
# run on a machine compiles (results do not depend on it: A and B of the resume test share executables anyway).
CACHE = os.environ.get("FLAMINGO_JAX_TEST_CACHE", os.path.join(tempfile.gettempdir(), "flamingo_jax_test_jax_cache"))


def _env(devices: int = 1) -> dict:
    env = dict(os.environ)
    env.update(PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu", JAX_DEFAULT_PRNG_IMPL="unsafe_rbg",
               JAX_COMPILATION_CACHE_DIR=CACHE, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="-1")
    if devices > 1:
        env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    return env


def _start(workdir: Path, env: dict, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, __file__, "train",
                             str(workdir), json.dumps(kw)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, cwd=ROOT)


def _new_steps(workdir: Path, offset: int) -> list[int]:
    """Steps logged after byte `offset` of metrics.jsonl (by the current run)."""
    path = workdir / "metrics.jsonl"
    if not path.exists():
        return []
    with open(path, "rb") as f:
        f.seek(offset)
        return [json.loads(line)["step"] for line in f.read().decode().splitlines() if line.endswith("}")]


def _latest(workdir: Path) -> int:
    """The newest committed step checkpoint (0: none)."""
    d = workdir / "checkpoints"
    return max((int(p.name) for p in d.iterdir() if p.name.isdigit()), default=0) if d.exists() else 0


def _losses(workdir: Path) -> dict[int, float]:
    out = {}
    for line in (workdir / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        out[row["step"]] = row["loss"]  # a resumed run re-logs steps after its checkpoint: the last wins
    return out


def _wait_for(cond, proc: subprocess.Popen, timeout: float = 300.0, poll: float = 0.005) -> None:
    end = time.monotonic() + timeout
    while not cond():
        if proc.poll() is not None:
            raise AssertionError(f"the run ended before the kill point:\n{proc.stdout.read()[-3000:]}")
        if time.monotonic() > end:
            proc.kill()
            raise AssertionError("timed out waiting for the run")
        time.sleep(poll)


def _final_trainable(workdir: Path, step: int) -> dict:
    import orbax.checkpoint as ocp

    path = workdir / "checkpoints" / str(step) / "state"
    ckptr = ocp.StandardCheckpointer()
    tree = ckptr.metadata(path).item_metadata.tree
    target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(tuple(m.shape), m.dtype), tree)
    return ckptr.restore(path, target)["trainable"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Run A: 28 steps without interruption. Run B: SIGKILLed three times (once while an asynchronous save
    is in flight), SIGTERMed once, resumed after each, then run to the end."""
    root = tmp_path_factory.mktemp("ckpt_runs")
    env = {**_env(), "TEST_STEP_SECONDS": "0.15"}

    a, b = root / "a", root / "b"
    proc = _start(a, env, **SMALL)
    out, _ = proc.communicate(timeout=900)
    assert proc.returncode == 0, out[-3000:]
    rng = random.Random(0)
    events = []
    every = SMALL["checkpoint_every"]
    for kind in ("kill", "kill_in_flight", "kill", "term"):
        resume = _latest(b)  # what this run resumes from (0: the start)
        offset = (b / "metrics.jsonl").stat().st_size if (b / "metrics.jsonl").exists() else 0
        slow = kind == "kill_in_flight"
        proc = _start(b, {**env, "FLAMINGO_JAX_TEST_SLOW_SAVE_S": "60" if slow else "0"}, **SMALL)
        ckdir = b / "checkpoints"
        if slow:  # kill while the next step checkpoint is being written (its commit is slowed down)
            name = f"{resume + every}.orbax-checkpoint-tmp"
            _wait_for(lambda: ckdir.exists() and any(p.name.startswith(name) for p in ckdir.iterdir()), proc)
        else:  # kill at a random step after the run has committed one new checkpoint
            target = resume + every + rng.randint(1, every - 1)
            _wait_for(lambda: _latest(b) > resume and max(_new_steps(b, offset), default=0) >= target, proc)
        at = max(_new_steps(b, offset), default=0)
        if kind == "term":
            sent = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            out, _ = proc.communicate(timeout=120)
            at = max(_new_steps(b, offset))
            events.append(
                dict(kind=kind, resume=resume, rc=proc.returncode, seconds=time.monotonic() - sent, out=out, at=at,
                     saved=(ckdir / str(at) / "state").is_dir()))
        else:
            proc.kill()
            proc.communicate()
            events.append(
                dict(kind=kind, resume=resume, at=at, lost_save=(resume + every) if slow else None,
                     committed=(ckdir / str(resume + every)).exists() if slow else None))
    proc = _start(b, env, **SMALL)
    out, _ = proc.communicate(timeout=900)
    assert proc.returncode == 0, out[-3000:]
    return a, b, events


@pytest.mark.slow
def test_killed_and_resumed_run_equals_the_uninterrupted_one_bitwise(runs):
    a, b, events = runs
    print("interruptions (kind, resumed from, stopped at):", [(e["kind"], e["resume"], e["at"]) for e in events])
    assert sum(e["kind"].startswith("kill") for e in events) >= 3
    assert [e["resume"] > 0 for e in events] == [False, True, True, True]  # each rerun resumed a checkpoint
    in_flight = events[1]
    assert not in_flight["committed"], "the save that was in flight when killed must not appear as a checkpoint"
    assert events[2]["resume"] == in_flight["resume"]  # so the next run resumed from the one before it
    losses_a, losses_b = _losses(a), _losses(b)
    assert sorted(losses_a) == sorted(losses_b) == list(range(1, SMALL["total_steps"] + 1))
    assert losses_a == losses_b  # bitwise: the floats of every step are identical
    _assert_tree_equal(_final_trainable(a, SMALL["total_steps"]), _final_trainable(b, SMALL["total_steps"]))
    assert not (b / "checkpoints_damaged").exists()  # killed saves never appear as checkpoints


@pytest.mark.slow
def test_sigterm_saves_the_current_step_and_exits_zero_within_seconds(runs):
    _, b, events = runs
    term = events[-1]
    assert term["rc"] == 0, term["out"][-2000:]
    assert "SIGTERM: saved the checkpoint of step" in term["out"]
    step = int(term["out"].split("SIGTERM: saved the checkpoint of step ")[1].split()[0])
    assert step == term["at"]  # the step that was running when the signal came, not an older checkpoint
    assert term["saved"] and term["seconds"] < 20, term["seconds"]
    meta = json.loads((b / "checkpoints" / str(SMALL["total_steps"]) / "meta" / "metadata").read_text())
    assert meta["step"] == SMALL["total_steps"]  # and the final save at the end


@pytest.mark.slow
def test_export_writes_one_self_contained_checkpoint(runs, tmp_path):
    import orbax.checkpoint as ocp

    from flamingo_jax import optim
    from flamingo_jax.tools.export import load_exported, main

    _, b, _ = runs
    main(["--workdir", str(b), "--out", str(tmp_path / "export")])
    params, config = load_exported(str(tmp_path / "export"), verify=True)
    _assert_tree_equal(params, checkpoint.read_workdir(str(b))[0])  # the evaluation entry point
    assert config.total_steps == SMALL["total_steps"] and config.model.lm.num_layers == 1
    trainable, frozen = optim.partition(params, list(config.trainable))
    _assert_tree_equal(trainable, _final_trainable(b, SMALL["total_steps"]))
    ckptr = ocp.StandardCheckpointer()
    stored = b / "frozen" / "params"
    tree = ckptr.metadata(stored).item_metadata.tree
    _assert_tree_equal(
        frozen, ckptr.restore(stored, jax.tree.map(lambda m: jax.ShapeDtypeStruct(tuple(m.shape), m.dtype), tree)))


MESH_SCRIPT = r"""
import json, sys
import jax, numpy as np
sys.path.insert(0, "tests")
from test_checkpoint import small_config
from flamingo_jax import checkpoint
from flamingo_jax.train import Trainer

work = sys.argv[1]
def trainer(mesh):
    config = small_config(mesh=mesh)
    return config, Trainer.create(config)

config, t = trainer((1, 4, 2))
noise = jax.jit(lambda s: jax.tree.map(lambda x: x + 0.25 * (1 + x) if x.dtype == np.float32 else x, s))
state = {**noise({k: v for k, v in t.state.items() if k != "rng"}), "rng": t.state["rng"]}
ck = checkpoint.Checkpoints(work, config, t.mesh)
ck.save(3, state, {"step": 3})
ck.close()
saved = jax.tree.map(np.asarray, {k: v for k, v in state.items() if k != "rng"})
specs = lambda s: [str(x.sharding.spec) for x in jax.tree.leaves(s["trainable"])]
report = {"saved_specs": specs(state)}
for mesh in [(1, 2, 4), (1, 8, 1)]:
    config, t = trainer(mesh)
    restored = checkpoint.Checkpoints(work, config, t.mesh).restore(t.state)
    got = {k: v for k, v in restored.state.items() if k != "rng"}
    for x, y in zip(jax.tree.leaves(got), jax.tree.leaves(saved)):
        np.testing.assert_array_equal(np.asarray(x), y)
    for x, y in zip(jax.tree.leaves(got), jax.tree.leaves({k: v for k, v in t.state.items() if k != "rng"})):
        assert x.sharding == y.sharding, (x.sharding, y.sharding)
    report[str(mesh)] = {"mesh": dict(t.mesh.shape), "specs": specs(restored.state), "step": restored.step}
print("REPORT " + json.dumps(report))
"""


@pytest.mark.slow
def test_save_on_one_mesh_restore_on_others(tmp_path):
    out = _run([sys.executable, "-c", MESH_SCRIPT, str(tmp_path / "work")], _env(devices=8))
    report = json.loads(out.split("REPORT ")[1].splitlines()[0])
    print(json.dumps(report)[:2000])
    assert report["(1, 2, 4)"]["mesh"] == {"data": 1, "fsdp": 2, "model": 4}
    assert report["(1, 8, 1)"]["mesh"] == {"data": 1, "fsdp": 8, "model": 1}
    assert report["saved_specs"] != report["(1, 2, 4)"]["specs"] != report["(1, 8, 1)"]["specs"]


def _restore_raw(path: Path) -> dict:
    """A saved Orbax tree as host arrays, read with the shapes and dtypes stored on disk (no target)."""
    import orbax.checkpoint as ocp

    ckptr = ocp.StandardCheckpointer()
    tree = ckptr.metadata(path).item_metadata.tree
    return ckptr.restore(path, jax.tree.map(lambda m: jax.ShapeDtypeStruct(tuple(m.shape), m.dtype), tree))


@pytest.mark.slow
def test_checkpoint_bytes_are_the_bytes_of_what_the_trainer_saves(runs):
    """checkpoint_bytes (from shapes, without a run) against the arrays the trainer actually wrote: the final step
    checkpoint of run A (trainable params, the Adam state, counters, rng) and its stored frozen params."""
    a, _, _ = runs
    nbytes = lambda tree: sum(np.asarray(x).nbytes for x in jax.tree.leaves(tree))  # noqa: E731
    state = _restore_raw(a / "checkpoints" / str(SMALL["total_steps"]) / "state")
    frozen = _restore_raw(a / "frozen" / "params")
    with jax.default_prng_impl(_env()["JAX_DEFAULT_PRNG_IMPL"]):  # the runs' PRNG: its key data is in the state
        b = train_state.checkpoint_bytes(small_config(**SMALL))
    assert b["step_checkpoint"] == nbytes(state)
    assert b["trainable_params"] == nbytes(state["trainable"])
    assert b["optimizer_state"] == nbytes(state["opt_state"])
    assert b["frozen_params"] == nbytes(frozen) > 0
    assert b["full_tree"] == nbytes(state) + nbytes(frozen)


@pytest.mark.slow
def test_bytes_per_step_checkpoint_3b(capsys, tmp_path):
    out = _run([sys.executable, "-c", BYTES_3B_SCRIPT], _env())
    b = json.loads(out.split("BYTES ")[1].splitlines()[0])
    assert 3 * b["trainable_params"] <= b["step_checkpoint"] < 3 * b["trainable_params"] + 1024
    assert b["full_tree"] == b["step_checkpoint"] + b["frozen_params"]
    with capsys.disabled():
        print("\ncheckpoint bytes 3b:", json.dumps(b))


class _Paced:
    """The data iterator, slowed to `seconds` per batch so that kills land at chosen steps."""

    def __init__(self, it, seconds: float):
        self.it, self.seconds = it, seconds

    def __iter__(self):
        return self

    def __next__(self):
        time.sleep(self.seconds)
        return next(self.it)

    def get_state(self):
        return self.it.get_state()

    def set_state(self, state):
        self.it.set_state(state)


def _train_main(workdir: str, overrides: str) -> None:
    from flamingo_jax import train

    class MetricsLog(train.MetricsLog):
        """metrics.jsonl only: these runs need no TensorBoard files."""

        def __init__(self, workdir: str, total_steps: int):
            self.primary, self.writer = True, None
            self.jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")

    train.MetricsLog = MetricsLog
    kw = json.loads(overrides)
    pace = float(os.environ.get("TEST_STEP_SECONDS", "0"))
    if pace:
        make = train.make_data_iterator
        train.make_data_iterator = lambda *a, **k: _Paced(make(*a, **k), pace)
    train.train(small_config(**kw), workdir)


if __name__ == "__main__":
    if sys.argv[1] == "train":
        _train_main(sys.argv[2], sys.argv[3])
