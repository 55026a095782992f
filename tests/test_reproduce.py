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

import pytest

from flamingo_jax import reproduce

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "experiments", "world.py") + ":steps=4,scale=0.02,batch=2,warmup=1,lm_layers=2,m3w_len=64,m3w_images=2,lm_len=64,lm_batch=2,text_sections=1"
TASKS = ("captions", "video_qa")  # one image and one video task: fewer decoder compiles
SHOTS = (0, 2)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("reproduce"))
    config = reproduce.load_config(TINY)
    with config.unlocked():
        for name in [n for n in config.data.eval_sets if n not in TASKS]:
            del config.data.eval_sets[name]
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        stages = reproduce.reproduce(config, workdir, pretrain_steps=3, shots=SHOTS, max_queries=2,
                                     eval_batch_size=2, config_spec=TINY)
    sys.stdout.write(out.getvalue())  # still shown by pytest on a failure
    sys.stderr.write(err.getvalue())
    return workdir, config, stages, out.getvalue() + err.getvalue()


def test_every_stage_ran_and_wrote_its_outputs(run):
    workdir, config, stages, _ = run
    assert list(stages) == list(reproduce.STAGES[:-1])
    for name, info in stages.items():
        assert info["seconds"] >= 0, name
    for path in ("world/samples.png", "pretrained/vision/config.json", "pretrained/lm/config.json",
                 "train/metrics.jsonl", "train/eval/results.json", "report.md", "report.json", "loss_curves.png",
                 "score_vs_shots.png"):
        assert os.path.isfile(os.path.join(workdir, path)), path
    records = reproduce.read_metrics(os.path.join(workdir, "train", "metrics.jsonl"))
    assert records[-1]["step"] == config.total_steps
    for name in config.data.mixture:
        assert f"loss/{name}" in records[-1]


def test_report_holds_the_evaluated_scores(run):
    workdir, config, stages, _ = run
    with open(os.path.join(workdir, "train", "eval", "results.json")) as f:
        cells = json.load(f)["cells"]
    assert {c["task"] for c in cells.values()} == set(config.data.eval_sets)
    assert {c["shots"] for c in cells.values()} == {0, 2}
    scores = stages["evaluate"]["scores"]
    report = open(os.path.join(workdir, "report.md")).read()
    for c in cells.values():
        measured = 100.0 * c["score"]
        assert scores[c["task"]][str(c["shots"])] == pytest.approx(measured)
        row = next(line for line in report.splitlines() if line.startswith(f"| {c['task']} ("))
        assert f"{measured:.1f}" in row
    overall = reproduce.overall_by_shots(scores)
    assert "| **overall** |" in report and f"{overall['2']:.1f}" in report


def test_rerun_skips_finished_stages(run, capsys):
    workdir, config, stages, _ = run
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
    workdir, config, stages, _ = run
    with open(os.path.join(workdir, "report.json")) as f:
        rep = json.load(f)
    assert set(rep) == {"scores", "overall", "seconds", "config", "checkpoint_step", "rices"}
    assert rep["config"] == TINY
    assert rep["checkpoint_step"] == config.total_steps  # the newest checkpoint: the last step's
    shots = [str(s) for s in SHOTS]
    assert set(rep["scores"]) == set(config.data.eval_sets)
    for task, by in rep["scores"].items():
        assert list(by) == shots, task
        assert all(isinstance(v, float) for v in by.values()), task
    assert list(rep["overall"]) == shots
    assert rep["overall"] == {s: v if math.isfinite(v) else None
                              for s, v in reproduce.overall_by_shots(stages["evaluate"]["scores"]).items()}
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
        measured = [100.0 * c["score"] for c in cells if c["task"] == task and c["selection"] == "rices"
                    and str(c["shots"]) == top]
        assert measured == [pytest.approx(v)], task
    rices_rows = _table(report, "| task | random | RICES |")
    assert {r["task"]: r["RICES"] for r in rices_rows[:-1]} == {t: _cell(v) for t, v in rep["rices"]["scores"].items()}
    assert rices_rows[-1]["RICES"] == _cell(rep["rices"]["overall"])
    times = {r["stage"]: r["seconds"] for r in _table(report, "| stage | seconds |")}
    assert times == {**{n: f"{rep['seconds'][n]:.0f}" for n in timed},
                     "**total (before the report)**": f"{rep['seconds']['total']:.0f}"}


def test_every_stage_prints_progress_with_rate_and_eta(run):
    _, config, _, out = run
    num = r"[0-9.e+-]+"
    steps = config.total_steps
    assert re.search(rf"^\[train\] step {steps}/{steps} \(100%\)  {num} steps/s  loss {num}  ETA 0:00$", out, re.M)
    for kind in ("vision", "lm"):
        assert re.search(rf"^\[pretrain {kind}\] step 3/3 \(100%\)  {num} steps/s  loss {num}.*  ETA 0:00$", out,
                         re.M), kind
    for task in TASKS:
        for s in SHOTS:
            assert re.search(rf"^\[evaluate\] {task} {s}-shot seed 0 shard 0/1: 2/2 \(100%\)  {num} queries/s  "
                             rf"ETA 0:00$", out, re.M), (task, s)


def test_default_shots_are_0_4_8_16_32():
    assert reproduce.parser().parse_args(["--workdir", "w"]).shots == "0,4,8,16,32"
    assert tuple(inspect.signature(reproduce.reproduce).parameters["shots"].default) == (0, 4, 8, 16, 32)
