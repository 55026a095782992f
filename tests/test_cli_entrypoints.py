"""The evaluate, ablate, reproduce and preview command lines: --help works, the flags reach the right call, and
a `--config.a.b=v` override reaches the config the program runs with (absl flags + ml_collections config_flags,
as for train and evaluate).

(Real runs behind them: tests/test_reproduce.py runs reproduce.reproduce end to end, tests/test_ablations.py
run_table -> run_one with the real trainer, tests/test_eval_harness.py evaluate.evaluate.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from flamingo_jax import ablate, ablation_rows, reproduce
from flamingo_jax.data import preview

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ABLATIONS = os.path.join(ROOT, "experiments", "ablations.py")


def test_ablate_help_list_and_flags_reach_run_table(tmp_path, monkeypatch, capsys):
    with pytest.raises(SystemExit) as e:
        ablate.main(["--help"])
    assert e.value.code == 0 and "--seed_batching" in capsys.readouterr().out
    assert ablate.main([
        "--config", f"{ABLATIONS}:table3", "--workdir",
        str(tmp_path / "l"), "--list", "--rows", "baseline,no_video"
    ]) == 0  # a real invocation: prints the rows, runs nothing
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith("baseline") and "data.mixture- = ['vtp']" in out
    calls = []
    monkeypatch.setattr(ablate, "run_table", lambda *a, **k: calls.append((a, k)))
    assert ablate.main([
        "--config", f"{ABLATIONS}:table3,steps=7", "--workdir",
        str(tmp_path / "w"), "--rows", "baseline,no_video", "--seeds", "3", "--evaluator", "m:f", "--denominators",
        "coco=100,vqav2=50", "--eval_max_queries", "5", "--eval_batch_size", "4", "--seed_batching=false"
    ]) == 0
    ((config, workdir, rows, seeds, evaluator, denominators), kw), = calls
    assert config.base.total_steps == 7 and workdir == str(tmp_path / "w") and rows == ["baseline", "no_video"]
    assert (seeds, evaluator, denominators) == (3, "m:f", {"coco": 100.0, "vqav2": 50.0})
    assert kw == dict(eval_kwargs=dict(max_queries=5, batch_size=4), seed_batching=False)


def test_ablate_config_override_reaches_run_table(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(ablate, "run_table", lambda *a, **k: calls.append(a))
    assert ablate.main([
        "--config", f"{ABLATIONS}:table3,steps=7", "--config.base.total_steps=13", "--config.base.optimizer.lr=0.5",
        "--workdir",
        str(tmp_path), "--rows", "baseline"
    ]) == 0
    ((config, *_), ) = calls
    assert config.base.total_steps == 13 and config.base.optimizer.lr == 0.5
    assert ablation_rows.apply_row(config.base, config.rows.no_video).total_steps == 13  # every row starts from it
    with pytest.raises(SystemExit) as e:  # an unknown field is an error, not a silent no-op
        ablate.main(["--config", f"{ABLATIONS}:table3", "--config.base.no_such_field=1", "--workdir", str(tmp_path)])
    assert e.value.code == 2


def test_reproduce_help_and_flags_reach_reproduce(tmp_path, monkeypatch, capsys):
    with pytest.raises(SystemExit) as e:
        reproduce.main(["--help"])
    assert e.value.code == 0 and "--pretrain_steps" in capsys.readouterr().out
    calls = []
    monkeypatch.setattr(reproduce, "reproduce", lambda *a, **k: calls.append((a, k)))
    spec = os.path.join(ROOT, "experiments", "world.py") + ":steps=9"
    assert reproduce.main([
        "--workdir",
        str(tmp_path), "--config", spec, "--pretrain_steps", "2", "--shots", "0,8", "--max_queries", "3",
        "--eval_batch_size", "6"
    ]) == 0
    ((config, workdir), kw), = calls
    assert config.total_steps == 9 and workdir == str(tmp_path)
    assert kw == dict(pretrain_steps=2, shots=[0, 8], max_queries=3, eval_batch_size=6, config_spec=spec)


def test_reproduce_config_override_reaches_reproduce_and_report_spec(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(reproduce, "reproduce", lambda *a, **k: calls.append((a, k)))
    spec = os.path.join(ROOT, "experiments", "world.py") + ":steps=9"
    assert reproduce.main(["--workdir", str(tmp_path), "--config", spec, "--config.total_steps=11"]) == 0
    ((config, _), kw), = calls
    assert config.total_steps == 11  # the override wins over the file's steps=9
    assert kw["config_spec"] == f"{spec} --config.total_steps=11"  # report.json records both
    calls.clear()
    assert reproduce.main(["--workdir", str(tmp_path), "--config.data.world.scale=0.25"]) == 0  # the default file
    ((config, _), kw), = calls
    assert config.data.world.scale == 0.25 and kw["config_spec"].endswith(
        "experiments/world.py --config.data.world.scale=0.25")


def test_preview_config_override_reaches_the_data_config(tmp_path, monkeypatch, capsys):
    with pytest.raises(SystemExit) as e:
        preview.main(["--help"])
    assert e.value.code == 0 and "--cell" in capsys.readouterr().out
    calls = []
    monkeypatch.setattr(preview, "preview", lambda *a, **k: calls.append((a, k)) or ("text", None))
    tiny = os.path.join(ROOT, "experiments", "tiny.py")
    preview.main(["--config", tiny, "--config.data.mode=round_robin", "--n", "2", "--cell", "16", "--eval"])
    ((data, n, out, cell), kw), = calls
    assert data.mode == "round_robin" and (n, out, cell, kw) == (2, None, 16, dict(with_eval=True))


_EVALUATE_MAIN = """
import json, sys
from absl import app
from flamingo_jax import evaluate as ev
ev._define_flags()
def fake(config, workdir, tasks, shots, **kw):
    print("CALL " + json.dumps(dict(steps=config.total_steps, workdir=workdir, tasks=tasks, shots=shots, **kw)))
    return {}
ev.evaluate = fake
sys.argv = ["evaluate"] + sys.argv[1:]
app.run(ev.main)
"""


def test_evaluate_help_and_flags_reach_evaluate(tmp_path):
    env = dict(os.environ, PYTHONPATH=ROOT)
    help_ = subprocess.run([sys.executable, "-m", "flamingo_jax.evaluate", "--help"], capture_output=True, text=True,
                           env=env, cwd=ROOT, timeout=300)
    # absl's --help prints the module's flags and exits 1 (absl.flags HelpFlag), not 0 like argparse
    assert help_.returncode == 1 and "--selection" in help_.stdout and "--max_queries" in help_.stdout
    out = subprocess.run([
        sys.executable, "-c", _EVALUATE_MAIN, f"--config={ROOT}/experiments/tiny.py", f"--workdir={tmp_path}",
        "--tasks=vqa,coco", "--shots=0,4", "--seeds=2", "--selection=rices", "--checkpoint=/ck", "--batch_size=4",
        "--num_beams=1", "--length_penalty=1.5", "--max_queries=7", "--num_shards=2", "--shard_index=1", "--ensemble=3",
        "--text_only_shots", "--config.total_steps=11"
    ], capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    (line, ) = [x for x in out.stdout.splitlines() if x.startswith("CALL ")]
    assert json.loads(line[5:]) == dict(steps=11, workdir=str(tmp_path), tasks=["vqa", "coco"], shots=[0, 4], seeds=2,
                                        selection="rices", checkpoint="/ck", batch_size=4, num_beams=1,
                                        length_penalty=1.5, max_queries=7, shard=[1,
                                                                                  2], ensemble=3, text_only_shots=True)
