"""Bootstrap intervals of few-shot scores (flamingo_jax.evaluation.bootstrap): per-query scores average to the
cell's score, intervals have the binomial width, paired draws cancel what two shot counts share, and reproduce's
overall intervals are built from them."""

import numpy as np
import pytest

from flamingo_jax import reproduce
from flamingo_jax.evaluation import bootstrap, metrics
from flamingo_jax.evaluation.harness import score_outputs

WORDS = "a red green big small dax blick wug moves left right up the in two three".split()


def _caption_cell(n, seed):
    rng = np.random.default_rng(seed)
    queries = [{"id": f"q{i}", "captions": [" ".join(rng.choice(WORDS, 8)) for _ in range(3)]} for i in range(n)]
    outputs = [{"index": i, "id": f"q{i}", "prediction": " ".join(rng.choice(WORDS, 8))} for i in range(n)]
    return queries, outputs


def test_per_query_scores_average_to_the_cells_score():
    queries, outputs = _caption_cell(30, 0)
    per = bootstrap.per_query_scores("cider", outputs, queries)
    assert per.mean() == pytest.approx(score_outputs("captions", outputs, queries), abs=1e-12)
    assert per.std() > 0  # per-query values, not the mean repeated
    vqa_q = [{"answers": ["red"] * 10}, {"answers": ["two"] * 4 + ["three"] * 6}, {"answers": ["dax"] * 10}]
    vqa_o = [{"index": i, "prediction": p} for i, p in enumerate(["red", "two", "wug"])]
    per = bootstrap.per_query_scores("vqa_accuracy", vqa_o, vqa_q)
    assert per.tolist() == [1.0, 1.0, 0.0]
    assert per.mean() == pytest.approx(score_outputs("vqa", vqa_o, vqa_q))
    assert bootstrap.per_query_scores("roc_auc", vqa_o, vqa_q) is None


def test_interval_has_the_binomial_width_and_pairs_cancel_shared_queries():
    n = 400
    correct = np.r_[np.ones(n // 2), np.zeros(n // 2)]
    draws = bootstrap.paired_draws({0: correct, 4: correct}, {0: range(n), 4: range(n)})
    lo, hi = bootstrap.interval(draws[0])
    assert lo < 0.5 < hi and hi - lo == pytest.approx(2 * 1.96 * 0.025, rel=0.15)  # 1.96 sd of a mean of 400
    assert np.all(bootstrap.changes(draws)["0->4"] == 0)  # the same answers at both shot counts: no change
    # the same scores listed in another query order pair query with query
    perm = np.random.default_rng(1).permutation(n)
    shuffled = bootstrap.paired_draws({0: correct, 4: correct[perm]}, {0: range(n), 4: perm})
    assert np.all(bootstrap.changes(shuffled)["0->4"] == 0)
    assert bootstrap.interval(np.ones(50)) == (1.0, 1.0)
    with pytest.raises(ValueError, match="different queries"):
        bootstrap.paired_draws({0: correct, 4: correct[:-1]}, {0: range(n), 4: range(n - 1)})


def test_set_level_metric_counts_a_query_drawn_twice_twice():
    queries = [{"id": f"q{i}", "label": i % 2} for i in range(4)]
    outputs = [{"index": i, "id": f"q{i}", "score": s} for i, s in enumerate([0.1, 0.9, 0.6, 0.4])]
    row = np.array([[0, 0, 1, 3]])
    got = bootstrap.set_level_draws(lambda o, q: score_outputs("classification", o, q, "roc_auc"), outputs, queries,
                                    row)
    assert got[0] == pytest.approx(metrics.roc_auc([0.1, 0.1, 0.9, 0.4], [0, 0, 1, 1]))
    # a draw of one class has no ROC-AUC: it is left out, and with no draw left there is no interval
    rows = np.array([[0, 2, 0, 2], [1, 2, 3, 0]])
    got = bootstrap.set_level_draws(lambda o, q: score_outputs("classification", o, q, "roc_auc"), outputs, queries,
                                    rows)
    assert got.tolist() == [pytest.approx(metrics.roc_auc([0.9, 0.6, 0.4, 0.1], [1, 0, 1, 0]))]
    assert bootstrap.interval(got[:0]) is None


def test_reproduce_intervals_hold_the_overall_and_separate_a_real_gain():
    rng = np.random.default_rng(0)
    n = 100
    tasks = ("captions", "vqa", "knowledge_vqa", "video_captions", "video_qa")
    cells = {}
    for t in tasks:
        base = rng.random(n) < 0.3
        gain = base | (rng.random(n) < 0.4)  # at 4 shots every query right at 0 stays right, and more are
        cells[t] = {
            s: dict(per_query=v.astype(float).tolist(), query_index=list(range(n)), score=float(v.mean()))
            for s, v in ((0, base), (4, base), (8, gain))
        }
    out = reproduce.score_intervals(cells, n_draws=500)
    overall = reproduce.overall_by_shots(
        {t: {str(s): 100 * c["score"]
             for s, c in by.items()}
         for t, by in cells.items()})
    for s in ("0", "4", "8"):
        lo, hi = out["overall"][s]
        assert lo < overall[s] < hi
    assert out["overall_change"]["0->4"] == [0.0, 0.0]
    assert out["overall_change"]["4->8"][0] > 0  # the gain is outside the noise
    for t in tasks:
        lo, hi = out["scores"][t]["0"]
        assert lo <= 100 * cells[t][0]["score"] <= hi
