"""experiments/ablations.py rows, flamingo_jax.ablate.apply_row / run_table, and the table writer's math and files."""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import os

import pytest

from flamingo_jax import ablate, ablations_table
from flamingo_jax.ablation_rows import AblationError, apply_row
from flamingo_jax.evaluation.paper_tables import SOTA, WORLD_TO_DEV

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _experiment(name):
    spec = importlib.util.spec_from_file_location(f"_exp_{name}", os.path.join(ROOT, "experiments", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


ABL = _experiment("ablations")


@pytest.fixture(scope="module")
def world():
    return ABL.get_config("all")


@pytest.fixture(scope="module")
def paper():
    return ABL.get_config("all,base=flamingo_3b")


def test_tables_have_every_paper_row(world):
    t3 = ABL.get_config("table3")
    assert t3.row_order == list(ABL.TABLE3)
    t10 = ABL.get_config("table10")
    assert t10.row_order == ["baseline", *ABL.TABLE10]
    assert len(world.row_order) == 18 + 12
    assert world.rows.baseline.paper.overall == 70.7
    assert world.rows.no_m3w.paper.scores.coco == 54.1
    assert world.rows.p_next_1.paper.overall == 70.4


@pytest.mark.parametrize("which", ["world", "paper"])
def test_every_row_applies_to_world_and_paper_bases(which, world, paper):
    config = {"world": world, "paper": paper}[which]
    base_before = config.base.to_dict()
    for name in config.row_order:
        row = config.rows[name]
        if not row.runnable:
            assert row.reason, name
            continue
        cfg = apply_row(config.base, row)
        assert cfg.is_locked
        assert set(cfg.data.mixture) <= set(cfg.data.datasets)
    assert config.base.to_dict() == base_before  # apply_row never edits the base


def test_row_effects(world):
    b, rows = world.base, world.rows
    assert apply_row(b, rows.no_video).data.mixture == ["m3w", "align", "ltip"]
    assert apply_row(b, rows.no_image_pairs).data.mixture == ["m3w", "vtp"]
    assert apply_row(b, rows.no_m3w).data.mixture == ["align", "ltip", "vtp"]
    rr = apply_row(b, rows.round_robin)
    assert rr.data.mode == "round_robin" and rr.total_steps == 4 * b.total_steps  # same gradient steps
    assert apply_row(b, rows.no_tanh).model.xattn.gating is False
    assert apply_row(b, rows.vanilla_xattn).model.xattn.kind == "vanilla"
    assert apply_row(b, rows.grafting).model.xattn.kind == "grafting"
    assert apply_row(b, rows.xattn_single).model.xattn.placement == "middle"
    assert apply_row(b, rows.xattn_every4).model.xattn.every == 4
    assert apply_row(b, rows.mlp_resampler).model.resampler.kind == "mlp"
    assert apply_row(b, rows.attend_all_previous).model.xattn.mask == "all_previous"
    assert apply_row(b, rows.p_next_0).data.datasets.m3w.p_next == 0.0
    lm = apply_row(b, rows.lm_unfrozen_random)
    assert "lm/.*" in lm.trainable and lm.pretrained.lm == "" and lm.model.param_dtype.lm == "float32"
    co = apply_row(b, rows.cotrain_text_pretrained)
    assert co.data.mixture[-1] == "text" and "lm/.*=0.1" in co.optimizer.lr_multipliers
    assert list(co.trainable) == [*b.trainable, "lm/.*"]
    v = apply_row(b, rows.clip_vit)
    assert v.model.vision.kind != b.model.vision.kind
    assert not rows.lm_c4.runnable and not rows.laion.runnable  # no second corpus / no LAION-like data


def test_paper_scale_vision_swap_sets_resolution(paper):
    cfg = apply_row(paper.base, paper.rows.clip_vit)
    assert cfg.model.vision.size == "L/14" and cfg.data.image_size == cfg.model.vision.image_size == 224
    assert apply_row(paper.base, paper.rows.nfnet_f0).model.vision.size == "F0"


def test_laion_proxy_knob():
    c = ABL.get_config("table3,laion_proxy=true")
    cfg = apply_row(c.base, c.rows.laion)
    assert c.rows.laion.runnable and cfg.data.mixture == ["m3w", "align", "vtp"]
    assert cfg.data.datasets.align.builder_config == "clip_pairs"


def test_apply_row_is_strict(world):
    b = world.base
    with pytest.raises(AblationError, match="unknown config path"):
        apply_row(b, [("model.xattn.gatting", False)])
    with pytest.raises(AblationError, match="unknown config path"):
        apply_row(b, [("nope.x", 1)])
    with pytest.raises(AblationError, match="does not contain"):
        apply_row(b, [("data.mixture-", ["laion"])])
    with pytest.raises(AblationError, match="not a list"):
        apply_row(b, [("data.mode+", ["x"])])
    with pytest.raises(AblationError):
        apply_row(b, [("model.xattn.every", "four")])  # type kept
    with pytest.raises(AblationError, match="empty"):
        apply_row(b, [("data.mixture-", list(b.data.mixture))])


def test_world_model_rows_build(world):
    """Every row that changes the model gives a model whose params can be counted (shapes only)."""
    counts = {}
    for name in world.row_order:
        row = world.rows[name]
        if row.runnable and (name == "baseline" or any(p.startswith("model.") for p, _ in row.overrides)):
            counts[name] = ablate.param_count(apply_row(world.base, row).model)
    assert counts["vanilla_xattn"] < counts["baseline"]  # no dense FFW in the cross-attention layers
    # 4 LM layers: single (layer 2) and every 4th (layer 0) both have one cross-attention layer
    assert counts["xattn_single"] == counts["xattn_every4"] < counts["xattn_every2"] < counts["baseline"]
    assert counts["resampler_small"] < counts["baseline"] < counts["resampler_large"]


# ---------------------------------------------------------------------------------------------- tables


def _meta(names, paper_overall):
    return [
        dict(name=n, label=n.upper(), group="(x)", runnable=True, reason="", note="",
             paper=dict(overall=paper_overall[n])) for n in names
    ]


def _scores(frac):
    """DEV scores equal to `frac` of each denominator, so the overall score is 100 * frac."""
    return {k: frac * d for k, d in SOTA.items()}


def test_summary_math():
    meta = _meta(["baseline", "worse", "better", "noisy"], dict(baseline=70.0, worse=60.0, better=65.0, noisy=69.0))
    results = {
        "baseline": [
            dict(scores=_scores(0.50), params=10, step_time=1.0),
            dict(scores=_scores(0.54), params=10, step_time=3.0)
        ],
        "worse": [dict(scores=_scores(0.40), params=8, step_time=0.5),
                  dict(scores=_scores(0.42), params=8)],
        "better": [dict(scores=_scores(0.60), params=12, step_time=1.0)],
        "noisy": [dict(scores=_scores(0.30)), dict(scores=_scores(0.70))],
    }
    rows = {r["name"]: r for r in ablations_table.summarize(meta, results)}
    base = rows["baseline"]
    assert base["overall"][0] == pytest.approx(52.0)
    assert base["overall"][1] == pytest.approx(math.sqrt(8.0))  # sample std of (50, 54)
    assert base["scores"]["coco"][0] == pytest.approx(0.52 * 143.3)
    assert base["step_time"] == pytest.approx(2.0) and base["agrees"] == "n/a"
    worse = rows["worse"]
    assert worse["delta"] == pytest.approx(41.0 - 52.0) and worse["paper_delta"] == pytest.approx(-10.0)
    assert worse["agrees"] == "yes" and worse["noise"] == ""
    better = rows["better"]  # ours +8, paper -5
    assert better["overall"] == (pytest.approx(60.0), 0.0) and better["agrees"] == "no"
    assert better["noise"] == "single seed"
    noisy = rows["noisy"]  # mean 50 (delta -2) with std 28: agrees, but not resolved
    assert noisy["agrees"] == "yes" and noisy["noise"] == "within noise"


def test_overall_with_world_denominators():
    scores = {k: 10.0 for k in ablations_table.DEV}
    assert ablations_table.overall(scores, {k: 20.0 for k in ablations_table.DEV}) == pytest.approx(50.0)
    assert math.isnan(ablations_table.overall({"coco": 1.0}))
    # the paper's own baseline row gives its stated overall score (70.7) from its five DEV scores
    assert ablations_table.overall(dict(zip(ABL.DEV, ABL.TABLE3["baseline"][2:7]))) == pytest.approx(70.6, abs=0.1)


def test_write_tables_files(tmp_path):
    meta = _meta(["baseline", "worse"], dict(baseline=70.7, worse=67.3))
    meta.append(
        dict(name="lm_c4", label="LM C4", group="T10", runnable=False, reason="needs C4", note="",
             paper=dict(overall=62.8)))
    results = {
        "baseline": [dict(scores=_scores(0.5), params=1_500_000, step_time=0.2)] * 2,
        "worse": [dict(scores=_scores(0.4), params=1_500_000, step_time=0.1)] * 2
    }
    paths = ablations_table.write_tables(str(tmp_path), "table3", meta, results, extra=dict(seeds=2))
    for ext in ("md", "csv", "tex", "png", "json"):
        assert os.path.getsize(paths[ext]) > 0
    md = open(paths["md"]).read()
    assert "| worse | (x) | WORSE | 1.50M |" in md and "50.0 ± 0.0" in md and "not run" in md
    assert "Direction agrees with the paper on 1 of 1 rows run (1 of 1 rows whose effect exceeds" in md
    with open(paths["csv"]) as f:
        rows = list(csv.DictReader(f))
    assert [r["row"] for r in rows] == ["baseline", "worse", "lm_c4"]
    assert float(rows[1]["overall_mean"]) == pytest.approx(40.0) and rows[1]["agrees"] == "yes"
    assert float(rows[1]["delta"]) == pytest.approx(-10.0)
    assert open(paths["png"], "rb").read(4) == b"\x89PNG"
    assert r"\begin{tabular}" in open(paths["tex"]).read()


def test_run_table_skips_finished_runs(tmp_path):
    config = ABL.get_config("table3")
    calls = []

    def runner(cfg, run_dir):
        calls.append((run_dir, cfg.seed))
        return dict(scores=_scores(0.5), params=1, step_time=0.1)

    rows = ["baseline", "no_video", "laion"]  # laion is not runnable on the world: skipped
    ablate.run_table(config, str(tmp_path), rows, seeds=2, runner=runner)
    assert len(calls) == 4 and {s for _, s in calls} == {config.base.seed, config.base.seed + 1}
    ablate.run_table(config, str(tmp_path), rows, seeds=2, runner=runner)
    assert len(calls) == 4  # everything was done: nothing reruns
    ablate.run_table(config, str(tmp_path), rows, seeds=3, runner=runner)
    assert len(calls) == 6  # only the new seed
    summary = json.load(open(tmp_path / "table3.json"))
    assert [r["name"] for r in summary["rows"]] == rows
    assert os.path.isfile(tmp_path / "rows" / "no_video" / "seed2" / "result.json")


def test_step_time_median(tmp_path):
    with open(tmp_path / "metrics.jsonl", "w") as f:
        for step, sps in ((5, 0.1), (10, 2.0), (15, 4.0), (20, 1.0), (15, 5.0)):  # compile first; resumed 15
            f.write(json.dumps(dict(step=step, steps_per_sec=sps)) + "\n")
    assert ablate.step_time(str(tmp_path)) == pytest.approx(0.5)  # median of 1/2, 1/5, 1/1


def test_evaluate_row_adapter(tmp_path, world):
    cfg = apply_row(world.base, [])
    out = ablate.evaluate_row(cfg, str(tmp_path), evaluator=f"{__name__}:_fake_evaluator")
    assert out == {"coco": pytest.approx(50.0), "vqav2": pytest.approx(25.0)}


def _fake_evaluator(config, workdir, tasks, shots):
    assert shots == [4] and "captions" in tasks
    return {"captions": {4: 0.5}, "vqa": 0.25}


def test_pretrained_knob_gives_one_directory_per_tower(tmp_path, monkeypatch):
    c = ABL.get_config(f"table3,pretrained={tmp_path}")
    base = c.base
    assert base.pretrained.vision.startswith(str(tmp_path / "vision_vit_tiny_"))
    assert base.pretrained.lm.startswith(str(tmp_path / "lm_chinchilla_4l_"))
    swap = apply_row(base, c.rows.clip_vit)
    assert swap.pretrained.vision.startswith(str(tmp_path / "vision_nfnet_tiny_"))
    assert apply_row(base, c.rows.lm_unfrozen_random).pretrained.lm == ""

    from flamingo_jax import pretrain

    calls = []
    monkeypatch.setattr(pretrain, "pretrain_for", lambda kind, cfg, path, **kw: calls.append((kind, path)))
    os.makedirs(base.pretrained.lm)
    open(os.path.join(base.pretrained.lm, "config.json"), "w").close()  # the LM is already pretrained
    ablate.ensure_pretrained(swap)
    assert calls == [("vision", swap.pretrained.vision)]


# ---------------------------------------------------------------------------------------------- a real run

_EVAL_CALLS = []


def _checkpoint_evaluator(config, workdir, tasks, shots, **kw):
    """A minimal evaluator: restores the run's newest checkpoint as flamingo_jax.evaluate does (decoding the five
    eval sets would cost minutes of compiles; tests/test_eval_harness.py runs that end to end) and returns a
    distinct score per task."""
    from flamingo_jax import evaluate

    _, step, checkpoint_id = evaluate.load_checkpoint(config, workdir)
    _EVAL_CALLS.append(dict(tasks=list(tasks), shots=list(shots), step=step, **kw))
    return {t: {shots[0]: 0.1 * (i + 1)} for i, t in enumerate(sorted(tasks))}


def test_run_table_trains_and_evaluates_a_row_for_real(tmp_path):
    """run_table -> run_one with the real trainer (the tests' tiny config: 2 updates on synthetic batches): it
    writes its checkpoints, the evaluator gets the trained run (its newest checkpoint is the last step's), and
    result.json and the table files hold the evaluator's scores under the DEV names."""
    from tiny import tiny_train_config

    _EVAL_CALLS.clear()
    config = ABL.get_config("table3")
    with config.unlocked():
        config.base = tiny_train_config(total_steps=2)
    work = tmp_path / "abl"
    ablate.run_table(config, str(work), ["baseline"], seeds=1, evaluator=f"{__name__}:_checkpoint_evaluator",
                     eval_kwargs=dict(max_queries=1, batch_size=1))
    run_dir = work / "rows" / "baseline" / "seed0"
    (call, ) = _EVAL_CALLS
    assert sorted(call.pop("tasks")) == sorted(config.base.data.eval_sets)
    assert call == dict(shots=[ablate.EVAL_SHOTS], step=2, max_queries=1, batch_size=1)
    records = [json.loads(line) for line in open(run_dir / "metrics.jsonl")]
    assert records[-1]["step"] == 2
    want = {WORLD_TO_DEV[t]: pytest.approx(10.0 * (i + 1)) for i, t in enumerate(sorted(WORLD_TO_DEV))}
    result = json.load(open(run_dir / "result.json"))
    assert result["scores"] == want
    assert result["row"] == "baseline" and result["seed"] == config.base.seed
    assert result["final_loss"] == records[-1]["loss"]
    assert result["params"] == ablate.param_count(config.base.model)
    assert result["train_seconds"] > 0 and math.isfinite(result["step_time"])
    summary = json.load(open(work / "table3.json"))
    (row, ) = [r for r in summary["rows"] if r["name"] == "baseline"]
    assert {k: v[0] for k, v in row["scores"].items()} == want and row["seeds"] == 1
    assert row["overall"][0] == pytest.approx(ablations_table.overall({k: v.expected for k, v in want.items()}))
    assert os.path.isfile(work / "table3.md")
