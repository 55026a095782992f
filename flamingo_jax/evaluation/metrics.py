"""The official metrics: CIDEr-D (COCO caption toolkit), VQA accuracy (VQA challenge script), ROC-AUC, top-1,
and Table 3's overall score.

  cider(predictions, references)      pycocoevalcap's Cider().compute_score after its PTBTokenizer
  vqa_accuracy(prediction, answers)   VQAEval.evaluate for one question
  roc_auc(scores, labels)             area under the ROC curve (ties count one half), as sklearn
  top1(predictions, answers)          exact-match accuracy after the VQA answer normalisation
  overall_score(scores)               mean of each DEV score / its fine-tuned SotA (Table 3, over Table 1's SotA)

Scores are returned as fractions (CIDEr as pycocoevalcap returns it, e.g. 0.86, not 86.0); tables multiply
by 100.
"""

from __future__ import annotations

import re
from collections import defaultdict
from typing import Hashable, Mapping, Sequence

import numpy as np

from flamingo_jax.evaluation import ptb
from flamingo_jax.evaluation.paper_tables import SOTA, WORLD_TO_DEV

# ---------------------------------------------------------------------------------------------- CIDEr-D


def _ngrams(words: list[str], n: int = 4) -> dict[tuple[str, ...], int]:
    counts: dict[tuple[str, ...], int] = defaultdict(int)
    for k in range(1, n + 1):
        for i in range(len(words) - k + 1):
            counts[tuple(words[i:i + k])] += 1
    return counts


def cider_d_tokenized(predictions: Mapping[Hashable, str], references: Mapping[Hashable, Sequence[str]], n: int = 4,
                      sigma: float = 6.0) -> tuple[float, dict]:
    """CIDEr-D on already tokenised text, exactly as pycocoevalcap's CiderScorer.

    Document frequencies come from the references of the evaluated set; idf = log(N) - log(max(1, df)) with
    N the number of images; tf-idf vectors per n-gram order; the hypothesis weight is clipped to the
    reference's (min(h, r) * r); Gaussian length penalty exp(-delta^2 / (2 sigma^2)) where (as in the toolkit)
    the "length" is the number of BIGRAMS; the per-order similarities are averaged over orders and references
    and multiplied by 10. Returns (mean score, {id: score}).
    """
    ids = list(references)
    if set(ids) != set(predictions):
        raise ValueError("predictions and references must have the same ids")
    crefs = [[_ngrams(r.split(), n) for r in references[i]] for i in ids]
    ctest = [_ngrams(predictions[i].split(), n) for i in ids]
    if any(len(r) == 0 for r in crefs):
        raise ValueError("every id needs at least one reference")
    df: dict[tuple[str, ...], float] = defaultdict(float)
    for refs in crefs:
        for gram in {g for ref in refs for g in ref}:
            df[gram] += 1
    ref_len = np.log(float(len(crefs)))

    def vec(counts):
        v = [dict() for _ in range(n)]
        norm = [0.0] * n
        length = 0
        for gram, tf in counts.items():
            k = len(gram) - 1
            w = float(tf) * (ref_len - np.log(max(1.0, df.get(gram, 0.0))))
            v[k][gram] = w
            norm[k] += w**2
            if k == 1:
                length += tf
        return v, [np.sqrt(x) for x in norm], length

    def sim(vh, nh, lh, vr, nr, lr):
        delta = float(lh - lr)
        val = np.zeros(n)
        for k in range(n):
            for gram, w in vh[k].items():
                r = vr[k].get(gram, 0.0)
                val[k] += min(w, r) * r
            if nh[k] != 0 and nr[k] != 0:
                val[k] /= nh[k] * nr[k]
            val[k] *= np.e**(-(delta**2) / (2 * sigma**2))
        return val

    scores = {}
    for i, test, refs in zip(ids, ctest, crefs):
        vh, nh, lh = vec(test)
        total = np.zeros(n)
        for ref in refs:
            total += sim(vh, nh, lh, *vec(ref))
        scores[i] = float(np.mean(total) / len(refs) * 10.0)
    return float(np.mean(np.array([scores[i] for i in ids]))), scores


def cider(predictions: Mapping[Hashable, str], references: Mapping[Hashable, Sequence[str]]) -> float:
    """pycocoevalcap's CIDEr-D (not multiplied by 100) after its PTB tokenisation (flamingo_jax.evaluation.ptb)."""
    refs = ptb.tokenize({k: list(v) for k, v in references.items()})
    preds = {k: ptb.tokenize_caption(v) for k, v in predictions.items()}
    return cider_d_tokenized(preds, refs)[0]


# ---------------------------------------------------------------------------------------------- VQA accuracy

_CONTRACTIONS = {
    "aint": "ain't",
    "arent": "aren't",
    "cant": "can't",
    "couldve": "could've",
    "couldnt": "couldn't",
    "couldn'tve": "couldn't've",
    "couldnt've": "couldn't've",
    "didnt": "didn't",
    "doesnt": "doesn't",
    "dont": "don't",
    "hadnt": "hadn't",
    "hadnt've": "hadn't've",
    "hadn'tve": "hadn't've",
    "hasnt": "hasn't",
    "havent": "haven't",
    "hed": "he'd",
    "hed've": "he'd've",
    "he'dve": "he'd've",
    "hes": "he's",
    "howd": "how'd",
    "howll": "how'll",
    "hows": "how's",
    "Id've": "I'd've",
    "I'dve": "I'd've",
    "Im": "I'm",
    "Ive": "I've",
    "isnt": "isn't",
    "itd": "it'd",
    "itd've": "it'd've",
    "it'dve": "it'd've",
    "itll": "it'll",
    "let's": "let's",
    "maam": "ma'am",
    "mightnt": "mightn't",
    "mightnt've": "mightn't've",
    "mightn'tve": "mightn't've",
    "mightve": "might've",
    "mustnt": "mustn't",
    "mustve": "must've",
    "neednt": "needn't",
    "notve": "not've",
    "oclock": "o'clock",
    "oughtnt": "oughtn't",
    "ow's'at": "'ow's'at",
    "'ows'at": "'ow's'at",
    "'ow'sat": "'ow's'at",
    "shant": "shan't",
    "shed've": "she'd've",
    "she'dve": "she'd've",
    "she's": "she's",
    "shouldve": "should've",
    "shouldnt": "shouldn't",
    "shouldnt've": "shouldn't've",
    "shouldn'tve": "shouldn't've",
    "somebody'd": "somebodyd",
    "somebodyd've": "somebody'd've",
    "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll",
    "somebodys": "somebody's",
    "someoned": "someone'd",
    "someoned've": "someone'd've",
    "someone'dve": "someone'd've",
    "someonell": "someone'll",
    "someones": "someone's",
    "somethingd": "something'd",
    "somethingd've": "something'd've",
    "something'dve": "something'd've",
    "somethingll": "something'll",
    "thats": "that's",
    "thered": "there'd",
    "thered've": "there'd've",
    "there'dve": "there'd've",
    "therere": "there're",
    "theres": "there's",
    "theyd": "they'd",
    "theyd've": "they'd've",
    "they'dve": "they'd've",
    "theyll": "they'll",
    "theyre": "they're",
    "theyve": "they've",
    "twas": "'twas",
    "wasnt": "wasn't",
    "wed've": "we'd've",
    "we'dve": "we'd've",
    "weve": "we've",
    "werent": "weren't",
    "whatll": "what'll",
    "whatre": "what're",
    "whats": "what's",
    "whatve": "what've",
    "whens": "when's",
    "whered": "where'd",
    "wheres": "where's",
    "whereve": "where've",
    "whod": "who'd",
    "whod've": "who'd've",
    "who'dve": "who'd've",
    "wholl": "who'll",
    "whos": "who's",
    "whove": "who've",
    "whyll": "why'll",
    "whyre": "why're",
    "whys": "why's",
    "wont": "won't",
    "wouldve": "would've",
    "wouldnt": "wouldn't",
    "wouldnt've": "wouldn't've",
    "wouldn'tve": "wouldn't've",
    "yall": "y'all",
    "yall'll": "y'all'll",
    "y'allll": "y'all'll",
    "yall'd've": "y'all'd've",
    "y'alld've": "y'all'd've",
    "y'all'dve": "y'all'd've",
    "youd": "you'd",
    "youd've": "you'd've",
    "you'dve": "you'd've",
    "youll": "you'll",
    "youre": "you're",
    "youve": "you've",
}
_NUMBERS = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6", "seven": "7",
    "eight": "8", "nine": "9", "ten": "10"
}
_ARTICLES = ("a", "an", "the")
# Verbatim from the official script, including its quirks: `(?!<=\d)` is a (no-op) negative LOOKAHEAD, not
# a lookbehind, and the script passes re.UNICODE (32) as sub()'s `count`, so at most 32 periods are removed.
_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
_COMMA_STRIP = re.compile(r"(\d)(,)(\d)")
_PUNCT = [";", r"/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!"]


def process_punctuation(text: str) -> str:
    """VQAEval.processPunctuation."""
    out = text
    for p in _PUNCT:
        if (p + " " in text or " " + p in text) or _COMMA_STRIP.search(text) is not None:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return _PERIOD_STRIP.sub("", out, re.UNICODE)


def process_digit_article(text: str) -> str:
    """VQAEval.processDigitArticle: lowercase, number words -> digits, drop articles, restore contractions."""
    words = [_NUMBERS.get(w, w) for w in text.lower().split()]
    words = [w for w in words if w not in _ARTICLES]
    return " ".join(_CONTRACTIONS.get(w, w) for w in words)


def normalize_answer(text: str) -> str:
    """The full VQA answer normalisation (whitespace, punctuation, digits, articles, contractions)."""
    text = text.replace("\n", " ").replace("\t", " ").strip()
    return process_digit_article(process_punctuation(text))


def vqa_accuracy(prediction: str, answers: Sequence[str], always_normalize: bool = False) -> float:
    """Accuracy of one answer against the annotators' answers, exactly as the official VQAEval.evaluate.

    For each annotator i: acc_i = min(1, #{j != i : answers[j] == prediction} / 3); the result is the mean
    over i (with 10 annotators: the 10 leave-one-out subsets of 9). As in the official script, the
    prediction and the answers are normalised (punctuation, digits, articles, contractions) ONLY when the
    annotators' answers are not all identical; otherwise only newlines/tabs/outer whitespace are touched.
    `always_normalize=True` normalises in every case (what most re-implementations do).
    """
    if not answers:
        raise ValueError("vqa_accuracy needs at least one reference answer")
    gts = [a.replace("\n", " ").replace("\t", " ").strip() for a in answers]
    res = prediction.replace("\n", " ").replace("\t", " ").strip()
    if always_normalize or len(set(gts)) > 1:
        gts = [process_digit_article(process_punctuation(a)) for a in gts]
        res = process_digit_article(process_punctuation(res))
    accs = []
    for i in range(len(gts)):
        matches = sum(1 for j, a in enumerate(gts) if j != i and a == res)
        accs.append(min(1.0, matches / 3.0))
    return float(sum(accs)) / len(accs)


# ---------------------------------------------------------------------------------------------- others


def roc_auc(scores: Sequence[float], labels: Sequence[int]) -> float:
    """Area under the ROC curve: P(score of a random positive > score of a random negative), ties count 1/2
    (the Mann-Whitney statistic; equal to sklearn.metrics.roc_auc_score)."""
    s = np.asarray(scores, np.float64)
    y = np.asarray(labels).astype(bool)
    pos, neg = int(y.sum()), int((~y).sum())
    if pos == 0 or neg == 0:
        raise ValueError("ROC-AUC needs at least one positive and one negative label")
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s), np.float64)
    sorted_s = s[order]
    i = 0
    while i < len(s):  # average ranks over ties
        j = i
        while j + 1 < len(s) and sorted_s[j + 1] == sorted_s[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return float((ranks[y].sum() - pos * (pos + 1) / 2.0) / (pos * neg))


def top1(predictions: Sequence[str], answers: Sequence[Sequence[str] | str]) -> float:
    """Fraction of predictions equal to the (first / only) answer after the VQA normalisation (MSVD-QA style)."""
    if len(predictions) != len(answers):
        raise ValueError("predictions and answers differ in length")
    if not predictions:
        return 0.0
    hits = 0
    for p, a in zip(predictions, answers):
        target = a if isinstance(a, str) else a[0]
        hits += normalize_answer(p) == normalize_answer(target)
    return hits / len(predictions)


def overall_score(scores: Mapping[str, float]) -> float:
    """Table 3's overall score (in %): mean over the DEV benchmarks of 100 * score / SotA.

    scores: {benchmark: value in the tables' units (CIDEr x100, accuracy in %)}; keys may be the DEV names
    (coco, okvqa, vqav2, msvdqa, vatex; also msvd_qa) or the world's analogues (captions, ...). All five
    are required, as in the paper."""
    dev = {}
    for k, v in scores.items():
        name = WORLD_TO_DEV.get(k, k.replace("msvd_qa", "msvdqa"))
        if name not in SOTA:
            raise ValueError(f"{k!r} is not a DEV benchmark ({sorted(SOTA)})")
        dev[name] = v
    missing = sorted(set(SOTA) - set(dev))
    if missing:
        raise ValueError(f"overall score needs all five DEV benchmarks; missing {missing}")
    return float(np.mean([100.0 * dev[k] / SOTA[k] for k in SOTA]))
