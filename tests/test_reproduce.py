"""The end-to-end reproduce pipeline on a minimal world: every stage runs and prints its progress, report.md and
report.json hold the measured scores, and a rerun skips the finished stages."""

import contextlib
import inspect
import io
import json
import math
import os
import re
import sys
import time

import pytest

from flamingo_jax import reproduce
from flamingo_jax.config_files import load_config
from flamingo_jax.evaluation.paper_tables import SOTA, WORLD_TO_DEV
from flamingo_jax.files import read_metrics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(
    ROOT, "experiments", "world.py"
) + ":steps=4,scale=0.02,batch=2,warmup=1,lm_layers=2,m3w_len=64,m3w_images=2,lm_len=64,lm_batch=2,text_sections=1"
TASKS = ("captions", "video_qa")  # one image and one video task: fewer decoder compiles
SHOTS = (0, 2)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("reproduce"))
    config = load_config(TINY)
    with config.unlocked():
        for name in [n for n in config.data.eval_sets if n not in TASKS]:
            del config.data.eval_sets[name]
    out, err = io.StringIO(), io.StringIO()
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        stages = reproduce.reproduce(config, workdir, pretrain_steps=3, shots=SHOTS, max_queries=2, eval_batch_size=2,
                                     config_spec=TINY)
    wall = time.perf_counter() - t0
    sys.stdout.write(out.getvalue())  # still shown by pytest on a failure
    sys.stderr.write(err.getvalue())
    return workdir, config, stages, out.getvalue() + err.getvalue(), wall


def test_every_stage_ran_and_wrote_its_outputs(run):
    workdir, config, stages, _, wall = run
    assert list(stages) == list(reproduce.STAGES[:-1])
    # Each stage's time was measured (every stage does real work: > 0.05 s), and together they account for
    # most of the invocation and never for more than it.
    seconds = {name: info["seconds"] for name, info in stages.items()}
    assert all(s > 0 for s in seconds.values()), seconds
    assert 0.5 * wall <= sum(seconds.values()) <= wall + 0.5, (seconds, wall)
    assert seconds["train"] > seconds["world"], seconds  # training compiles and runs a model
    for path in ("world/samples.png", "pretrained/vision/config.json", "pretrained/lm/config.json",
                 "train/metrics.jsonl", "train/eval/results.json", "report.md", "report.json", "loss_curves.png",
                 "score_vs_shots.png"):
        assert os.path.isfile(os.path.join(workdir, path)), path
    records = read_metrics(os.path.join(workdir, "train", "metrics.jsonl"))
    assert records[-1]["step"] == config.total_steps
    for name in config.data.mixture:
        assert f"loss/{name}" in records[-1]


def test_report_holds_the_evaluated_scores(run):
    """The cells the evaluator wrote are the TRAINED checkpoint's (not evaluate's random-init fallback), and the
    report's table holds each cell's score in its task's row and its shots' column."""
    workdir, config, stages, _, _ = run
    from flamingo_jax import evaluate

    with open(os.path.join(workdir, "train", "eval", "results.json")) as f:
        cells = json.load(f)["cells"]
    assert {c["task"] for c in cells.values()} == set(config.data.eval_sets)
    assert {c["shots"] for c in cells.values()} == {0, 2}
    _, step, checkpoint_id = evaluate.load_checkpoint(reproduce.prepared_config(config, workdir),
                                                      os.path.join(workdir, "train"))
    assert step == config.total_steps and checkpoint_id.startswith(f"train-step{config.total_steps}-")
    assert {c["checkpoint"] for c in cells.values()} == {checkpoint_id}  # never "random-init-..."
    assert stages["evaluate"]["checkpoint_step"] == config.total_steps
    scores = stages["evaluate"]["scores"]
    rows = {
        r["task (DEV analogue)"].split(" (")[0]: r
        for r in _table(open(os.path.join(workdir, "report.md")).read(), "| task (DEV analogue) |")
    }
    for c in cells.values():
        if c["selection"] != "random":
            continue
        measured = 100.0 * c["score"]
        assert scores[c["task"]][str(c["shots"])] == pytest.approx(measured)
        assert rows[c["task"]][f"{c['shots']}-shot"] == f"{measured:.1f}", (c, rows[c["task"]])
    overall = reproduce.overall_by_shots(scores)
    assert {s: rows["**overall**"][f"{s}-shot"] for s in ("0", "2")} == {s: f"{overall[s]:.1f}" for s in ("0", "2")}


def test_report_puts_every_score_in_its_own_cell(tmp_path):
    """The run's scores are all 0.0 (4 updates learn nothing), so the report is also written here from distinct
    scores for the five tasks: every cell, the overall row and the RICES table are read back by column."""
    stages = {name: dict(seconds=1.0 + i) for i, name in enumerate(reproduce.STAGES[:-1])}
    config = load_config(TINY)  # all five world eval sets
    tasks = list(config.data.eval_sets)
    scores = {t: {"0": 10.0 + i, "4": 20.0 + 2 * i} for i, t in enumerate(tasks)}
    fake = dict(
        stages, evaluate=dict(scores=scores, checkpoint_step=7, seconds=5.0,
                              rices=dict(shots=4, scores={t: 30.0 + i
                                                          for i, t in enumerate(tasks)})))
    reproduce.write_report(config, str(tmp_path), fake, config_spec="x")
    report = (tmp_path / "report.md").read_text()
    rows = _table(report, "| task (DEV analogue) |")
    assert [r["task (DEV analogue)"] for r in rows] == [f"{t} ({WORLD_TO_DEV[t]})" for t in tasks] + ["**overall**"]
    for t, r in zip(tasks, rows):
        assert {s: r[f"{s}-shot"] for s in ("0", "4")} == {s: f"{v:.1f}" for s, v in scores[t].items()}, t
    sota = SOTA
    want = {s: sum(100.0 * scores[t][s] / sota[WORLD_TO_DEV[t]] for t in tasks) / len(tasks) for s in ("0", "4")}
    assert {s: rows[-1][f"{s}-shot"] for s in ("0", "4")} == {s: f"{v:.1f}" for s, v in want.items()}
    rices = {r["task"]: r for r in _table(report, "| task | random | RICES |")}
    for i, t in enumerate(tasks):
        assert (rices[t]["random"], rices[t]["RICES"]) == (f"{scores[t]['4']:.1f}", f"{30.0 + i:.1f}"), t
    rep = json.loads((tmp_path / "report.json").read_text())
    assert rep["scores"] == scores and rep["checkpoint_step"] == 7
    assert rep["overall"] == pytest.approx(want)


def test_rerun_skips_finished_stages(run, capsys):
    workdir, config, stages, _, _ = run
    again = reproduce.reproduce(config, workdir, pretrain_steps=3, shots=SHOTS, max_queries=2, eval_batch_size=2,
                                config_spec=TINY)
    out = capsys.readouterr().out
    assert again == stages
    for name in reproduce.STAGES[:-1]:
        assert f"[reproduce] {name}: done before" in out


def _table(report: str, header_start: str) -> list[dict[str, str]]:
    """The markdown table whose header row starts with `header_start`, as one {column: cell} per row."""
    lines = report.splitlines()
    i = next(i for i, line in enumerate(lines) if line.startswith(header_start))
    cols = [c.strip() for c in lines[i].strip("|").split("|")]
    rows = []
    for line in lines[i + 2:]:
        if not line.startswith("|"):
            break
        rows.append(dict(zip(cols, (c.strip() for c in line.strip("|").split("|")))))
    return rows


def _cell(x):
    return "nan" if x is None else f"{x:.1f}"


def test_report_json_matches_report_md(run):
    workdir, config, stages, _, _ = run
    with open(os.path.join(workdir, "report.json")) as f:
        rep = json.load(f)
    assert set(rep) == {"scores", "overall", "seconds", "config", "checkpoint_step", "rices", "intervals"}
    # every score has its 95% interval over the queries, around it (two of the five tasks here: no overall)
    assert rep["intervals"]["level"] == 0.95 and "overall" not in rep["intervals"]
    assert set(rep["intervals"]["scores"]) == set(rep["scores"])
    for task, by in rep["scores"].items():
        for s, v in by.items():
            lo, hi = rep["intervals"]["scores"][task][s]
            assert lo - 1e-6 <= v <= hi + 1e-6, (task, s)
    assert rep["config"] == TINY
    assert rep["checkpoint_step"] == config.total_steps  # the newest checkpoint: the last step's
    shots = [str(s) for s in SHOTS]
    assert set(rep["scores"]) == set(config.data.eval_sets)
    for task, by in rep["scores"].items():
        assert list(by) == shots, task
        assert all(isinstance(v, float) for v in by.values()), task
    assert list(rep["overall"]) == shots
    assert rep["overall"] == {
        s: v if math.isfinite(v) else None
        for s, v in reproduce.overall_by_shots(stages["evaluate"]["scores"]).items()
    }
    timed = list(reproduce.STAGES[:-1])
    assert list(rep["seconds"]) == timed + ["total"]
    assert rep["seconds"]["total"] == pytest.approx(sum(rep["seconds"][n] for n in timed), abs=0.05)
    assert {n: rep["seconds"][n] for n in timed} == {n: stages[n]["seconds"] for n in timed}

    report = open(os.path.join(workdir, "report.md")).read()
    rows = _table(report, "| task (DEV analogue) |")
    assert len(rows) == len(config.data.eval_sets) + 1
    for row in rows[:-1]:
        task = row["task (DEV analogue)"].split(" (")[0]
        assert {s: row[f"{s}-shot"] for s in shots} == {s: _cell(rep["scores"][task][s]) for s in shots}, task
    assert rows[-1]["task (DEV analogue)"] == "**overall**"
    assert {s: rows[-1][f"{s}-shot"] for s in shots} == {s: _cell(rep["overall"][s]) for s in shots}
    # RICES at the largest shot count, beside random selection, from the evaluated cells
    top = str(max(SHOTS))
    assert rep["rices"]["shots"] == top and set(rep["rices"]["scores"]) == set(config.data.eval_sets)
    with open(os.path.join(workdir, "train", "eval", "results.json")) as f:
        cells = json.load(f)["cells"].values()
    for task, v in rep["rices"]["scores"].items():
        measured = [
            100.0 * c["score"] for c in cells
            if c["task"] == task and c["selection"] == "rices" and str(c["shots"]) == top
        ]
        assert measured == [pytest.approx(v)], task
    rices_rows = _table(report, "| task | random | RICES |")
    assert {r["task"]: r["RICES"] for r in rices_rows[:-1]} == {t: _cell(v) for t, v in rep["rices"]["scores"].items()}
    assert rices_rows[-1]["RICES"] == _cell(rep["rices"]["overall"])
    times = {r["stage"]: r["seconds"] for r in _table(report, "| stage | seconds |")}
    assert times == {
        **{n: f"{rep['seconds'][n]:.0f}"
           for n in timed}, "**total (before the report)**": f"{rep['seconds']['total']:.0f}"
    }


def test_every_stage_prints_progress_with_rate_and_eta(run):
    _, config, _, out, _ = run
    num = r"[0-9.e+-]+"
    steps = config.total_steps
    assert re.search(rf"^\[train\] step {steps}/{steps} \(100%\)  {num} steps/s  loss {num}  ETA 0:00$", out, re.M)
    for kind in ("vision", "lm"):
        assert re.search(rf"^\[pretrain {kind}\] step 3/3 \(100%\)  {num} steps/s  loss {num}.*  ETA 0:00$", out,
                         re.M), kind
    for task in TASKS:
        for s in SHOTS:
            assert re.search(
                rf"^\[evaluate\] {task} {s}-shot seed 0 shard 0/1: 2/2 \(100%\)  {num} queries/s  "
                rf"ETA 0:00$", out, re.M), (task, s)


def test_default_shots_are_0_4_8_16_32():
    f, _ = reproduce.config_files.parse_flags("reproduce", "", ["--workdir", "w"], reproduce.define_flags)
    assert f.shots == ["0", "4", "8", "16", "32"]
    assert tuple(inspect.signature(reproduce.reproduce).parameters["shots"].default) == (0, 4, 8, 16, 32)
