"""The end-to-end reproduce pipeline on a minimal world: every stage runs, the report holds the measured scores,
and a rerun skips the finished stages."""

import json
import os

import pytest

from flamingo_jax import reproduce

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "experiments", "world.py") + ":steps=4,scale=0.02,batch=2,warmup=1,lm_layers=2,m3w_len=64"
TASKS = ("captions", "video_qa")  # one image and one video task: fewer decoder compiles


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("reproduce"))
    config = reproduce.load_config(TINY)
    with config.unlocked():
        for name in [n for n in config.data.eval_sets if n not in TASKS]:
            del config.data.eval_sets[name]
    stages = reproduce.reproduce(config, workdir, pretrain_steps=3, shots=(0, 2), max_queries=2,
                                 eval_batch_size=2)
    return workdir, config, stages


def test_every_stage_ran_and_wrote_its_outputs(run):
    workdir, config, stages = run
    assert list(stages) == list(reproduce.STAGES[:-1])
    for name, info in stages.items():
        assert info["seconds"] >= 0, name
    for path in ("world/samples.png", "pretrained/vision/config.json", "pretrained/lm/config.json",
                 "train/metrics.jsonl", "train/eval/results.json", "report.md", "loss_curves.png",
                 "score_vs_shots.png"):
        assert os.path.isfile(os.path.join(workdir, path)), path
    records = reproduce.read_metrics(os.path.join(workdir, "train", "metrics.jsonl"))
    assert records[-1]["step"] == config.total_steps
    for name in config.data.mixture:
        assert f"loss/{name}" in records[-1]


def test_report_holds_the_evaluated_scores(run):
    workdir, config, stages = run
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
    workdir, config, stages = run
    again = reproduce.reproduce(config, workdir, pretrain_steps=3, shots=(0, 2), max_queries=2, eval_batch_size=2)
    out = capsys.readouterr().out
    assert again == stages
    for name in reproduce.STAGES[:-1]:
        assert f"[reproduce] {name}: done before" in out
