"""flamingo_jax.seed_batch: N seeds in one vmapped program equal the same seeds trained alone, write the same
workdir layout, resume from the newest common checkpoint; ablate batches a row's seeds."""

from __future__ import annotations

import json
import shutil

import jax
import ml_collections
import numpy as np
import pytest

from flamingo_jax import ablate, checkpoint
from flamingo_jax.seed_batch import SeedBatchError, check_batchable, seed_config, train_seeds
from flamingo_jax.train import mesh_and_model, train
from flamingo_jax.train_state import init_params
from tiny import tiny_train_config

STEPS = 3
SEEDS = (0, 1)
TOL = 1e-5


def _config(tmp):
    """The tiny config with a pretrained vision tower (shared by the seeds) and a random frozen LM (each
    seed's own, stacked): both kinds of frozen subtree."""
    from flamingo_jax.convert.store import Converted, save_converted

    config = tiny_train_config(total_steps=STEPS)
    config.checkpoint_every = 2  # checkpoints at steps 2 and 3: the resume test goes back to 2
    mesh, model = mesh_and_model(config)
    params, _, _ = init_params(model, config.model, mesh, jax.random.key(1234))
    config.pretrained.vision = save_converted(
        str(tmp / "vision"),
        Converted(kind="vision", params=jax.tree.map(np.asarray, params["vision"]), config=config.model.vision,
                  source={"test": "seed_batch"}))
    return config


def _params(workdir):
    """{path: array} of every param (trainable from the newest step checkpoint, frozen from the store)."""
    params = checkpoint.read_workdir(str(workdir))[0]
    flat = {jax.tree_util.keystr(k): np.asarray(v) for k, v in jax.tree_util.tree_flatten_with_path(params)[0]}
    return flat


def _rows(workdir):
    by_step = {}
    for line in (workdir / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        by_step[rec["step"]] = rec  # later lines win (resumed runs)
    return [by_step[s] for s in sorted(by_step)]


def _max_diff(a, b):
    assert a.keys() == b.keys()
    return max(float(np.max(np.abs(a[k].astype(np.float64) - b[k].astype(np.float64)))) for k in a)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("seed_batch")
    config = _config(tmp)
    alone = [tmp / f"alone{s}" for s in SEEDS]
    for s, d in zip(SEEDS, alone):
        train(seed_config(config, s), str(d))
    batched = [tmp / f"batched{s}" for s in SEEDS]
    lasts = train_seeds(config, [str(d) for d in batched], list(SEEDS))
    return config, alone, batched, lasts


def test_each_batched_seed_equals_the_seed_alone(runs):
    _, alone, batched, lasts = runs
    for a, b, last in zip(alone, batched, lasts):
        pa, pb = _params(a), _params(b)
        assert _max_diff(pa, pb) <= TOL, (a, b)  # trainable and frozen leaves, fp32
        ra, rb = _rows(a), _rows(b)
        assert [r["step"] for r in rb] == list(range(1, STEPS + 1))
        for x, y in zip(ra, rb):
            for key in ("loss", "loss/m3w", "loss/align", "grad_norm", "param_norm", "learning_rate"):
                np.testing.assert_allclose(y[key], x[key], rtol=TOL, atol=TOL, err_msg=key)
            assert y["seed_batch"] == len(SEEDS) and y["steps_per_sec"] > 0
        assert last["loss"] == pytest.approx(rb[-1]["loss"])


def test_the_seeds_differ_far_more_than_the_tolerance(runs):
    """The control: the two seeds' weights and losses are not the same run."""
    _, alone, batched, _ = runs
    p0, p1 = _params(batched[0]), _params(batched[1])
    trainable = [k for k in p0 if "['lm']" not in k and "['vision']" not in k]
    assert max(float(np.max(np.abs(p0[k] - p1[k]))) for k in trainable) > 1000 * TOL
    lm = [k for k in p0 if k.startswith("['lm']")]  # random frozen LM: each seed's own
    assert max(float(np.max(np.abs(p0[k] - p1[k]))) for k in lm) > 1000 * TOL
    vision = [k for k in p0 if k.startswith("['vision']")]  # pretrained: shared
    assert max(float(np.max(np.abs(p0[k] - p1[k]))) for k in vision) == 0.0
    l0, l1 = _rows(batched[0])[-1]["loss"], _rows(batched[1])[-1]["loss"]
    assert abs(l0 - l1) > 1000 * TOL


def test_workdirs_have_the_single_run_layout(runs):
    _, alone, batched, _ = runs
    for a, b in zip(alone, batched):
        assert sorted(p.name for p in (b / "checkpoints").iterdir()) == sorted(
            p.name for p in (a / "checkpoints").iterdir()) == ["2", "3"]
        ma = json.loads((a / "frozen" / "manifest.json").read_text())
        mb = json.loads((b / "frozen" / "manifest.json").read_text())
        assert mb == ma and mb["subtrees"]["vision"]["source"] == "pretrained"
        assert mb["subtrees"]["lm"]["source"] == "workdir"
        assert ablate.final_loss(str(b)) == pytest.approx(ablate.final_loss(str(a)), rel=TOL)
        assert np.isfinite(ablate.step_time(str(b)))


def test_resume_goes_back_to_the_newest_common_checkpoint(runs, tmp_path):
    config, alone, batched, _ = runs
    dirs = [tmp_path / d.name for d in batched]
    for src, dst in zip(batched, dirs):
        shutil.copytree(src, dst)
    shutil.rmtree(dirs[0] / "checkpoints" / "3")  # seed 0 was killed before its last save: common step 2
    lasts = train_seeds(config, [str(d) for d in dirs], list(SEEDS))
    assert all(last["seed_batch"] == len(SEEDS) for last in lasts)  # step 3 was trained again
    for a, d in zip(alone, dirs):
        assert _max_diff(_params(a), _params(d)) <= TOL
        assert _rows(d)[-1]["loss"] == pytest.approx(_rows(a)[-1]["loss"], rel=TOL)
    assert (dirs[0] / "checkpoints" / "3").is_dir()


def test_only_seeds_of_one_experiment_batch():
    config = tiny_train_config()
    check_batchable([seed_config(config, s) for s in (0, 1, 2)])
    other = seed_config(config, 1)
    with other.unlocked():
        other.optimizer.lr = 2 * config.optimizer.lr
    with pytest.raises(SeedBatchError, match="optimizer.lr"):
        check_batchable([config, other])
    sample = ml_collections.ConfigDict(config.to_dict())
    sample.data.mode = "sample"
    with pytest.raises(SeedBatchError, match="sample"):
        check_batchable([sample, seed_config(sample, 1)])


def test_ablate_batches_a_rows_seeds(tmp_path):
    import os

    from flamingo_jax.config_files import load_config, parse_flags

    config = load_config(os.path.join(os.path.dirname(__file__), "..", "experiments", "ablations.py") + ":table3")
    singles, batches = [], []

    def runner(cfg, run_dir):
        singles.append(cfg.seed)
        return dict(scores={}, params=1, step_time=0.1)

    def seeds_runner(cfgs, run_dirs):
        batches.append([c.seed for c in cfgs])
        return [dict(scores={}, params=1, step_time=0.1) for _ in cfgs]

    base = config.base.seed
    ablate.run_table(config, str(tmp_path / "a"), ["baseline", "no_video"], seeds=3, runner=runner,
                     seeds_runner=seeds_runner)
    assert batches == [[base, base + 1, base + 2]] * 2 and not singles
    out = ablate.run_table(config, str(tmp_path / "a"), ["baseline"], seeds=4, runner=runner, seeds_runner=seeds_runner)
    assert singles == [base + 3] and len(batches) == 2  # one seed left: run alone
    assert [r["seed"] for r in out["baseline"]] == [0, 1, 2, 3]
    ablate.run_table(config, str(tmp_path / "b"), ["baseline"], seeds=2, runner=runner, seeds_runner=seeds_runner,
                     seed_batching=False)
    assert singles == [base + 3, base, base + 1] and len(batches) == 2
    # the flag: --seed_batching=false / --noseed_batching off, on by default (absl's boolean flag)
    spec = os.path.join(os.path.dirname(__file__), "..", "experiments", "ablations.py")
    for given, want in (([], True), (["--seed_batching=false"], False), (["--noseed_batching"], False)):
        f, _ = parse_flags("ablate", "", ["--config", spec, "--workdir", "w", *given], ablate.define_flags)
        assert f.seed_batching is want
