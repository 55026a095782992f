"""The mixture iterator: contract shapes, determinism, exact resume, sharding, mixture rates."""

import json

import numpy as np
import pytest

from flamingo_jax.data import mixture
from flamingo_jax.data.testing import tiny_config, tiny_vocab


def _make(mode="accumulate", seed=0, process_index=0, process_count=1, names=None, threads=2, **kw):
    cfg = tiny_config(mode=mode, num_threads=threads, **kw)
    return mixture.make_mixture_iterator(cfg, seed=seed, process_index=process_index, process_count=process_count,
                                         vocab=tiny_vocab(), names=names)


def _equal(x, y):
    return x.keys() == y.keys() and all(np.array_equal(x[n][k], y[n][k]) for n in x for k in x[n])


@pytest.fixture(scope="module")
def first_batches():
    it = _make()
    return [next(it) for _ in range(3)]


def test_batch_contract(first_batches):
    cfg = tiny_config()
    batch = first_batches[0]
    assert list(batch) == list(cfg.mixture)
    v = tiny_vocab()
    for name, b in batch.items():
        ds = cfg.datasets[name]
        bs, L, T, F, S = ds.batch_size, ds.seq_len, ds.max_images, ds.frames, cfg.image_size
        assert b["tokens"].shape == b["targets"].shape == b["media_index"].shape == b["loss_mask"].shape == (bs, L)
        assert (b["tokens"].dtype, b["targets"].dtype, b["media_index"].dtype, b["loss_mask"].dtype) == \
            (np.int32, np.int32, np.int32, np.float32)
        assert b["images"].shape == (bs, T, F, S, S, 3) and b["images"].dtype == np.float32
        assert b["image_mask"].shape == (bs, T) and b["image_mask"].dtype == bool
        assert 0.0 <= b["images"].min() and b["images"].max() <= 1.0
        assert np.array_equal(b["targets"][:, :-1], b["tokens"][:, 1:])  # targets are tokens shifted left
        assert b["tokens"].max() < v.size
        # every referenced image is present; <image> tokens count the present images
        assert np.all(b["media_index"] <= b["image_mask"].sum(1, keepdims=True))
        assert np.array_equal((b["tokens"] == v.image_id).sum(1), b["image_mask"].sum(1))
        assert np.all(b["loss_mask"][b["targets"] == v.image_id] == 0)
    assert batch["m3w"]["image_mask"].shape[1] == 5


def test_same_seed_same_batches_other_seed_differs(first_batches):
    again = _make(threads=1)
    assert all(_equal(x, next(again)) for x in first_batches)
    other = _make(seed=1)
    assert not _equal(first_batches[0], next(other))


@pytest.mark.parametrize("mode", ["accumulate", "sample"])
def test_resume_is_exact_through_json(mode):
    it = _make(mode=mode)
    for _ in range(3):
        next(it)
    state = json.loads(json.dumps(it.get_state()))
    expected = [next(it) for _ in range(3)]
    fresh = _make(mode=mode)  # a new process restoring the checkpointed state
    fresh.set_state(state)
    assert all(_equal(x, next(fresh)) for x in expected)
    assert fresh.get_state() == it.get_state()


def test_processes_read_disjoint_records():
    """Two processes together read every record of an epoch exactly once (the caption is the record id)."""
    v = tiny_vocab()
    cfg = tiny_config(num_threads=1)
    image = mixture.open_source(cfg, cfg.datasets.align)[0]["image"]
    n = 10
    source = [{"id": str(i), "image": image, "text": str(i)} for i in range(n)]
    seen = []
    for p in range(2):
        it = mixture.make_dataset_iterator(cfg, "align", v, process_index=p, process_count=2, source=source)
        ids = []
        while len(ids) < n // 2:
            ids += [
                int(v.decode(t, markers=False).replace("<image>", "").replace("<EOC>", "")) for t in next(it)["tokens"]
            ]
        seen.append(ids[:n // 2])
    assert sorted(seen[0] + seen[1]) == list(range(n))


def test_global_batch_is_split_over_processes_and_vocab_is_checked():
    it = _make(process_index=1, process_count=2, names=["align"], threads=1)
    assert next(it)["align"]["tokens"].shape[0] == tiny_config().datasets.align.batch_size // 2
    v = tiny_vocab()
    it.check_model_vocab(v.base_size, v.base_size, v.base_size + 1)
    with pytest.raises(ValueError, match="lm.vocab_size"):
        it.check_model_vocab(v.base_size + 1, v.base_size + 1, v.base_size + 2)


def test_sample_mode_rates_match_weights():
    it = _make(mode="sample")
    w = np.array([it.weights[n] for n in it.names])
    counts = np.zeros(len(w))
    steps = 8000
    for s in range(steps):
        counts[it.names.index(it.choose(s)[0])] += 1
    expected = w / w.sum()
    se = np.sqrt(expected * (1 - expected) / steps)
    assert np.all(np.abs(counts / steps - expected) < 4 * se + 1e-9), (counts / steps, expected)
    assert list(next(it)) == it.choose(0)


def test_round_robin_cycles_in_mixture_order():
    """Each step yields ONE dataset, in mixture order, and its batch is that dataset's own next batch: step k holds
    batch k // 4 of dataset k % 4, as the dataset's iterator alone yields them (the others do not advance)."""
    it = _make(mode="round_robin")
    steps = [next(it) for _ in range(6)]
    names = ["m3w", "align", "ltip", "vtp"]
    assert [list(b) for b in steps] == [[names[k % 4]] for k in range(6)]
    alone = {n: _make(names=[n]) for n in ("m3w", "align")}  # accumulate mode over one dataset: its own stream
    own = {n: [next(alone[n])[n] for _ in range(2)] for n in alone}
    for k in (0, 1, 4, 5):
        n = names[k % 4]
        got, want = steps[k][n], own[n][k // 4]
        assert got.keys() == want.keys() and all(np.array_equal(got[f], want[f]) for f in want), (k, n)
    assert not np.array_equal(steps[4]["m3w"]["tokens"], steps[0]["m3w"]["tokens"])


def test_paper_weights_and_ablation_subsets():
    it = _make(names=["m3w", "align", "ltip"])
    assert it.weights == {"m3w": 1.0, "align": 0.2, "ltip": 0.2}
    assert tiny_config().datasets.vtp.weight == 0.03
    with pytest.raises(ValueError, match="lacks datasets"):
        it.set_state({"version": 1, "step": 0, "datasets": {}})


def test_tfds_source_gives_the_same_contract():
    it = _make(source="tfds", names=["vtp"], threads=1)
    b = next(it)["vtp"]
    cfg = tiny_config()
    assert b["images"].shape == (2, 1, cfg.datasets.vtp.frames, cfg.image_size, cfg.image_size, 3)
