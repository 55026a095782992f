"""What a base install promises (pyproject.toml): training and evaluation without TensorFlow, the configs
found outside a checkout, and a wheel that carries the configs and the dataset builders' files and builds
without warnings."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile

import pytest

from flamingo_jax import config_files

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# In a fresh process: TensorFlow made unimportable (as in a base install, which does not have it), then the
# tiny config trained for 2 steps and evaluated from its checkpoint; prints the TensorFlow-family modules
# that were imported anyway.
_TRAIN_AND_EVALUATE = r"""
import json, sys
for name in ("tensorflow", "tensorflow_text", "seqio"):
    sys.modules[name] = None  # import raises ModuleNotFoundError; importlib.util.find_spec says None
from flamingo_jax import config_files, evaluate, reproduce, train
workdir = sys.argv[1]
config = config_files.load_config(config_files.find_config("experiments/tiny.py"))
config.total_steps, config.log_every = 2, 1
train.train(config, workdir)
scores = evaluate.evaluate(config, workdir, ["vqa"], [0], checkpoint=workdir, batch_size=2, num_beams=1,
                           max_queries=2, progress=False)
tf = sorted(m for m, v in sys.modules.items()
            if v is not None and m.split(".")[0] in ("tensorflow", "tensorflow_text", "seqio", "clu"))
print("RESULT " + json.dumps({"scores": scores, "tf_modules": tf}))
"""


def test_tiny_config_trains_and_evaluates_without_tensorflow(tmp_path):
    env = dict(os.environ, PYTHONPATH=ROOT)
    r = subprocess.run(
        [sys.executable, "-c", _TRAIN_AND_EVALUATE, str(tmp_path / "w")], cwd=tmp_path, env=env, capture_output=True,
        text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    (line, ) = [x for x in r.stdout.splitlines() if x.startswith("RESULT ")]
    result = json.loads(line[len("RESULT "):])
    assert result["tf_modules"] == []
    assert 0.0 <= result["scores"]["vqa"]["0"] <= 1.0
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(tmp_path / "w"))  # TensorBoard, via tensorboardX
    assert len((tmp_path / "w" / "metrics.jsonl").read_text().splitlines()) == 2


def test_find_config_outside_a_checkout(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no experiments/ here
    found = config_files.find_config("experiments/tiny.py:vocab_size=64")
    path, _, arg = found.partition(":")
    assert arg == "vocab_size=64" and os.path.samefile(path, os.path.join(ROOT, "experiments", "tiny.py"))
    assert config_files.find_config("experiments/nope.py") == "experiments/nope.py"  # reported by the CLI as typed
    (tmp_path / "experiments").mkdir()
    (tmp_path / "experiments" / "tiny.py").write_text("")
    assert config_files.find_config("experiments/tiny.py") == "experiments/tiny.py"  # a local file wins
    assert config_files.resolve_argv(["--config=experiments/world.py:steps=3", "--x", "--config", "a.py"]) == [
        "--config=" + os.path.join(config_files.installed_dir(), "world.py") + ":steps=3", "--x", "--config", "a.py"
    ]


def test_wheel_carries_configs_builders_and_scripts_and_builds_quietly(tmp_path):
    pytest.importorskip("setuptools", minversion="77")
    r = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-v", "-w",
         str(tmp_path), ROOT], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    log = (r.stdout + r.stderr).lower()
    assert "would be ignored" not in log and "deprecat" not in log
    (wheel, ) = [f for f in os.listdir(tmp_path) if f.endswith(".whl")]
    names = set(zipfile.ZipFile(tmp_path / wheel).namelist())
    for config in os.listdir(os.path.join(ROOT, "experiments")):
        if config.endswith(".py"):
            assert f"flamingo_jax/experiments/{config}" in names
    for folder, _, files in os.walk(os.path.join(ROOT, "data")):
        rel = os.path.relpath(folder, os.path.join(ROOT, "data"))
        if "__pycache__" in rel:
            continue
        for f in files:
            if f.endswith(".py") or "dummy_data" in rel.split(os.sep):
                assert os.path.normpath(os.path.join("flamingo_jax_datasets", rel, f)) in names
    for folder, _, files in os.walk(os.path.join(ROOT, "flamingo_jax")):
        for f in files:
            if f.endswith(".py"):
                assert os.path.relpath(os.path.join(folder, f), ROOT) in names
    dist = next(n.split("/")[0] for n in names if n.endswith(".dist-info/METADATA"))
    scripts = zipfile.ZipFile(tmp_path / wheel).read(f"{dist}/entry_points.txt").decode()
    assert f"{dist}/licenses/LICENSE" in names
    import importlib
    for line in scripts.splitlines():
        if "=" in line:
            module, _, fn = line.split("=", 1)[1].strip().partition(":")
            assert callable(getattr(importlib.import_module(module), fn)), line


_IMPORT_TENSORFLOW = r"""
import flamingo_jax.tensorflow_guard as guard
calls = []
keep = guard.keep_off_accelerators
guard.keep_off_accelerators = lambda tf: (calls.append(tf.__name__), keep(tf))
import tensorflow as tf
tf.config.list_physical_devices()
print("HOOK", calls, [d.device_type for d in tf.config.get_visible_devices()])
"""


def test_tensorflow_is_kept_off_accelerators_and_quiet_when_imported():
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}  # as a user's shell has it
    env["PYTHONPATH"] = ROOT
    r = subprocess.run([sys.executable, "-c", _IMPORT_TENSORFLOW], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "HOOK ['tensorflow'] ['CPU']" in r.stdout  # set_visible_devices([], 'GPU') ran at TF's import
    if not any(os.path.exists(f"/dev/nvidia{i}") for i in range(8)):  # a CPU host: TF's CUDA probe is silent
        assert "cuInit" not in r.stderr and "cpu_feature_guard" not in r.stderr, r.stderr[-2000:]
