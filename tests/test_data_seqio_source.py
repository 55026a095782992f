"""config.data.source = 'seqio': our Tasks give the grain source's batches and losses; a user's Task
trains and resumes; the data counters reach metrics.jsonl."""

import json
from pathlib import Path

import numpy as np
import pytest

from flamingo_jax.data import mixture, seqio_source, tasks
from flamingo_jax.data.testing import tiny_config, tiny_vocab

ROOT = Path(__file__).resolve().parents[1]


def _equal(x, y):
    return x.keys() == y.keys() and all(np.array_equal(x[n][k], y[n][k]) for n in x for k in x[n])


def _seqio(cfg):
    return seqio_source.make_seqio_iterator(cfg, {n: cfg.datasets[n].batch_size
                                                  for n in cfg.mixture}, vocab=tiny_vocab())


def test_world_tasks_give_the_grain_batches_and_resume_without_replay():
    cfg = tiny_config(num_threads=1, mixture=["m3w", "align"])
    grain_it = mixture.make_mixture_iterator(cfg, vocab=tiny_vocab())
    want = [next(grain_it) for _ in range(4)]
    it = _seqio(tiny_config(source="seqio", mixture=["m3w", "align"]))
    got = [next(it) for _ in range(2)]
    state = json.loads(json.dumps(it.get_state()))
    del it
    assert state["datasets"]["m3w"]["next_index"] == 4  # 2 batches of 2: the next stream position, saved
    resumed = _seqio(tiny_config(source="seqio", mixture=["m3w", "align"]))
    resumed.set_state(state)
    got += [next(resumed) for _ in range(2)]
    assert all(_equal(a, b) for a, b in zip(want, got))
    assert resumed.metrics() == grain_it.metrics()  # the same counters as the grain iterator's
    with pytest.raises(ValueError, match="grain source"):
        resumed.set_state(grain_it.get_state())
    del resumed


def _register_user_task(name, cfg):
    """A user's own seqio Task: random examples with the align dataset's feature shapes (any source would do)."""
    import seqio
    import tensorflow as tf

    shapes = tasks.feature_shapes(cfg, "align")

    def dataset_fn(split, shuffle_files, seed=None):

        def make(i):
            rng = tf.random.stateless_uniform
            ex = {
                k: tf.cast(rng(shape, seed=[i, j], maxval=(1.0 if dtype == np.float32 else 50.0)), tf.as_dtype(dtype))
                for j, (k, (shape, dtype)) in enumerate(shapes.items())
            }
            ex["image_mask"] = tf.ones(shapes["image_mask"][0], tf.bool)
            return ex

        return tf.data.Dataset.range(64).map(make)

    feats = {k: seqio.ContinuousFeature(dtype=tf.as_dtype(d), rank=len(s)) for k, (s, d) in shapes.items()}
    seqio.TaskRegistry.remove(name)
    seqio.TaskRegistry.add(name, source=seqio.FunctionDataSource(dataset_fn, splits=["train"]), preprocessors=[],
                           output_features=feats)


def test_a_user_registered_task_trains_through_the_source_and_resumes_by_replay():
    cfg = tiny_config(source="seqio", mixture=["m3w", "align"])
    cfg.datasets.align.seqio_task = "my_users_task"
    _register_user_task("my_users_task", cfg)
    it = _seqio(cfg)
    want = [next(it) for _ in range(4)]
    assert want[0]["align"]["tokens"].shape == (2, cfg.datasets.align.seq_len)
    it2 = _seqio(cfg)
    for _ in range(2):
        next(it2)
    state = json.loads(json.dumps(it2.get_state()))
    assert state["datasets"]["align"]["taken"] == 4
    resumed = _seqio(cfg)
    resumed.set_state(state)
    assert all(_equal(a, next(resumed)) for a in want[2:])
    del it, it2, resumed


def _tiny_train_config(source):
    from flamingo_jax.config_files import load_config

    config = load_config(str(ROOT / "experiments" / "tiny.py"))
    config.data = tiny_config(source=source, num_threads=1, mixture=["m3w", "align"])
    config.total_steps, config.log_every = 3, 1
    return config


def test_the_tiny_config_trains_on_seqio_with_the_grain_losses_and_logs_the_counters(tmp_path):
    """The tiny config trains on both sources; their losses are equal step for step (same examples, same
    accumulation), and every log step carries the data counters (metrics.jsonl)."""
    from flamingo_jax.train import train

    rows = {}
    for source in ("world", "seqio"):
        train(_tiny_train_config(source), str(tmp_path / source))
        rows[source] = [json.loads(l) for l in (tmp_path / source / "metrics.jsonl").read_text().splitlines()]
        assert [r["data/m3w/records"] for r in rows[source]] == [2.0, 4.0, 6.0]  # the world has no bad records
        assert [r["data/align/records"] for r in rows[source]] == [2.0, 4.0, 6.0]
    assert [r["loss"] for r in rows["world"]] == [r["loss"] for r in rows["seqio"]]
    assert len({r["loss"] for r in rows["world"]}) == 3  # it trained: three different losses
