"""The held-out benchmarks' metrics against scikit-learn (NDCG, weighted AP) or worked by hand from their
datasets' definitions (iVQA accuracy, WUPS over a given word similarity, RareAct's grouping)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, ndcg_score

from flamingo_jax.evaluation import heldout_metrics as hm


def test_visdial_ndcg_matches_sklearn_at_k_nonzero():
    rng = np.random.default_rng(0)
    rels, scores = [], []
    for _ in range(20):
        rel = np.where(rng.random(100) < 0.1, rng.choice([0.2, 0.4, 0.6, 0.8, 1.0], 100), 0.0)
        rel[rng.integers(100)] = 1.0  # at least one relevant option
        s = rng.permutation(100).astype(float)  # distinct scores: no tie-breaking conventions involved
        rels.append(rel)
        scores.append(s)
        k = int((rel > 0).sum())
        assert hm.ndcg_round(rel, s) == pytest.approx(ndcg_score([rel], [s], k=k), abs=1e-12)
    assert hm.ndcg(rels, scores) == pytest.approx(
        np.mean([ndcg_score([r], [s], k=int((r > 0).sum())) for r, s in zip(rels, scores)]), abs=1e-12)


def test_visdial_ndcg_by_hand():
    # relevance of 4 options: two relevant (k = 2); the model ranks option 2 (rel 0.5) first, option 0 (rel 1) third
    rel, s = [1.0, 0.0, 0.5, 0.0], [0.2, 0.3, 0.9, 0.1]
    dcg = 0.5 / np.log2(2) + 0.0 / np.log2(3)
    idcg = 1.0 / np.log2(2) + 0.5 / np.log2(3)
    assert hm.ndcg_round(rel, s) == pytest.approx(dcg / idcg)
    assert hm.ndcg_round(rel, [0.9, 0.1, 0.5, 0.0]) == 1.0
    with pytest.raises(ValueError):
        hm.ndcg_round([0, 0], [1, 2])


def test_weighted_average_precision_matches_sklearn_with_ties_and_weights():
    rng = np.random.default_rng(1)
    for _ in range(20):
        n = int(rng.integers(5, 40))
        y = rng.integers(0, 2, n)
        y[0] = 1
        s = rng.integers(0, 6, n).astype(float)  # many ties
        w = rng.choice([1.0, 0.5, 1 / 3], n)
        assert hm.weighted_average_precision(y, s, w) == pytest.approx(average_precision_score(y, s, sample_weight=w),
                                                                       abs=1e-12)
        assert hm.weighted_average_precision(y, s) == pytest.approx(average_precision_score(y, s), abs=1e-12)


def test_rareact_mwap_groups_and_weights_by_hand():
    # Two classes: (cut, laptop) id 0 and (cut, bread) id 1 share the verb; (wash, laptop) id 2 shares the noun
    # with class 0 and nothing with class 1.
    rows = [
        dict(video_id="a", class_id=0, verb="cut", noun="laptop", annotation=1),  # 0: positive of class 0
        dict(video_id="a", class_id=0, verb="cut", noun="laptop", annotation=1),  # 1: positive, same video
        dict(video_id="b", class_id=0, verb="cut", noun="laptop", annotation=0),  # 2: negative of class 0
        dict(video_id="c", class_id=1, verb="cut", noun="bread", annotation=1),  # 3: positive of class 1
        dict(video_id="d", class_id=1, verb="cut", noun="bread", annotation=2),  # 4: hard negative of class 1
        dict(video_id="e", class_id=2, verb="wash", noun="laptop", annotation=1),  # 5: positive of class 2
    ]
    scores = np.array([[0.9, 0.1, 0.2], [0.3, 0.2, 0.1], [0.5, 0.0, 0.0], [0.4, 0.8, 0.0], [0.0, 0.9, 0.0],
                       [0.6, 0.3, 0.7]])
    # class 0: positives rows 0, 1 (video a: weight 1/2 each), negatives row 2, hard negatives rows 3
    # (cut bread: same verb) and 5 (wash laptop: same noun).
    ap0 = average_precision_score([1, 1, 0, 0, 0], scores[[0, 1, 2, 3, 5], 0], sample_weight=[.5, .5, 1, 1, 1])
    # class 1: positive row 3, hard negatives row 4 (annotated 2) and rows 0, 1 (cut laptop, video a: 1/2
    # each); row 5 (wash laptop) shares nothing: a negative.
    ap1 = average_precision_score([1, 0, 0, 0, 0], scores[[3, 5, 4, 0, 1], 1], sample_weight=[1, 1, 1, .5, .5])
    # class 2: positive row 5; hard negatives rows 0, 1 (laptop); negative row 3 (cut bread).
    ap2 = average_precision_score([1, 0, 0, 0], scores[[5, 3, 0, 1], 2], sample_weight=[1, 1, .5, .5])
    assert hm.rareact_mwap(scores, rows) == pytest.approx((ap0 + ap1 + ap2) / 3)
    # by hand for class 0: ranked 0.9 (pos .5), 0.6 (neg 1), 0.5 (neg 1), 0.4 (neg 1), 0.3 (pos .5)
    assert ap0 == pytest.approx(0.5 * 1.0 + 0.5 * (1.0 / 4.0))


def test_ivqa_accuracy_by_hand():
    answers = ["dog", "dog", "puppy", "Dog.", "cat"]
    assert hm.ivqa_accuracy("dog", answers) == 1.0  # 3 of 5 (after normalisation) -> min(1, 3/2)
    assert hm.ivqa_accuracy("puppy", answers) == 0.5  # 1 of 5 -> 1/2
    assert hm.ivqa_accuracy("a cat", answers) == 0.5  # articles dropped
    assert hm.ivqa_accuracy("horse", answers) == 0.0


def test_wups_thresholding_by_hand_with_a_given_similarity():
    # WUPS is defined over any word similarity: the thresholding checked on a table.
    table = {frozenset(("dog", "puppy")): 0.95, frozenset(("dog", "cat")): 0.8, frozenset(("red", "dog")): 0.3}
    sim = lambda a, b: table.get(frozenset((a, b)), 0.0)  # noqa: E731
    assert hm.wups("dog", "dog", sim) == 1.0
    assert hm.wups("puppy", "dog", sim, alpha=0.9) == 0.95  # above the threshold: kept
    assert hm.wups("cat", "dog", sim, alpha=0.9) == pytest.approx(0.08)  # below: one tenth
    assert hm.wups("cat", "dog", sim, alpha=0.0) == 0.8
    # "red dog" vs "dog": pred->truth: red~dog 0.3 (x0.1 at alpha .9) * dog~dog 1; truth->pred: dog~dog 1.
    assert hm.wups("red dog", "dog", sim, alpha=0.9) == pytest.approx(min(0.03 * 1.0, 1.0))
    assert hm.wups("red dog", "dog", sim, alpha=0.0) == pytest.approx(0.3)
    # words with no similar word are skipped; nothing similar at all scores 0
    assert hm.wups("blue dog", "dog", sim) == 1.0
    assert hm.wups("blue", "dog", sim) == 0.0


def test_wups_with_wordnet_3_0_from_local_files():
    # The `wups` extra's WordNet 3.0 (NExT-QA's). Wu-Palmer by hand: dog.n.01 and cat.n.01 meet at carnivore.n.01
    # (depth 12 counting the root as 1), each 2 edges below it: 2 * 12 / (14 + 14) = 0.857, the value NLTK's
    # WordNet HOWTO prints for dog.wup_similarity(cat).
    wn = hm.wordnet_reader()
    assert wn.get_version() == "3.0"
    dog, cat = wn.synsets("dog")[0], wn.synsets("cat")[0]
    assert (dog.name(), cat.name()) == ("dog.n.01", "cat.n.01")  # the index offsets land on their synsets
    common = dog.lowest_common_hypernyms(cat)[0]
    assert (common.name(), common.max_depth() + 1) == ("carnivore.n.01", 12)
    assert (dog.shortest_path_distance(common), cat.shortest_path_distance(common)) == (2, 2)
    assert hm.wordnet_similarity("dog", "cat") == pytest.approx(24 / 28)
    assert hm.wups("dog", "cat", alpha=0.0) == pytest.approx(24 / 28)
    assert hm.wups("dog", "cat", alpha=0.9) == pytest.approx(2.4 / 28)  # below NExT-QA's WUPS@0.9 threshold
    assert hm.wordnet_similarity("dog", "qwzx") == 0.0  # no synset


def test_wordnet_dir_without_a_database_names_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv(hm.WORDNET_ENV, str(tmp_path))
    hm.wordnet_reader.cache_clear()
    try:
        with pytest.raises(RuntimeError, match="holds no WordNet database"):
            hm.wordnet_reader()
    finally:
        monkeypatch.delenv(hm.WORDNET_ENV)
        hm.wordnet_reader.cache_clear()


def test_choice_accuracy():
    assert hm.accuracy([0, 2, 1, 3], [0, 2, 3, 3]) == 0.75


def test_roc_auc_matches_sklearn_with_ties():
    from sklearn.metrics import roc_auc_score

    from flamingo_jax.evaluation import metrics

    rng = np.random.default_rng(2)
    for _ in range(20):
        y = rng.integers(0, 2, 30)
        y[:2] = [0, 1]
        s = rng.integers(0, 5, 30).astype(float)  # ties count one half
        assert metrics.roc_auc(s, y) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
