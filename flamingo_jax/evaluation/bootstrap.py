"""95% confidence intervals of few-shot scores, by resampling the queries (percentile bootstrap).

A few-shot score is measured on a sample of queries (the world's eval sets hold 50-100), so every score, and
every change between shot counts, carries sampling noise. The interval resamples the queries with
replacement and recomputes the score. Where the metric is a mean over queries (VQA accuracy, top-1, ...) a
draw is the mean of the drawn queries' scores. CIDEr-D is a corpus statistic through its document frequencies:
they are held at the whole query set's, so a draw is again a mean of per-query CIDEr (recomputing them per
draw would cost about 0.1 s a draw for 100 captions and moves the interval little). Set-level metrics (ROC-AUC,
mWAP, NDCG) are recomputed on each draw.

Paired draws: the cells of one task at different shot counts answer the same queries, so one draw of query
indices serves every shot count of the task. The change of a score from one shot count to the next then has
its own interval, narrower than the difference of two independent ones, and the overall score of a draw
averages the five tasks' draws (tasks are independent samples; draw b of each task is combined with draw b
of the others).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import numpy as np

from flamingo_jax.evaluation import metrics, ptb

LEVEL = 0.95
DRAWS = 1000


def per_query_scores(metric: str, outputs: Sequence[Mapping[str, Any]],
                     queries: Sequence[Mapping[str, Any]]) -> np.ndarray | None:
    """[len(outputs)] scores whose mean is the cell's score (harness.score_outputs, `metric` resolved by
    harness.metric_name), or None for a metric that is not a mean over queries."""
    recs = [queries[o["index"]] for o in outputs]
    if metric == "cider":  # the DF of the whole query set, as score_outputs computes it
        refs = ptb.tokenize({r["id"]: list(r["captions"]) for r in recs})
        preds = {o["id"]: ptb.tokenize_caption(o["prediction"]) for o in outputs}
        _, by_id = metrics.cider_d_tokenized(preds, refs)
        return np.array([by_id[o["id"]] for o in outputs])
    if metric == "vqa_accuracy":
        return np.array([metrics.vqa_accuracy(o["prediction"], r["answers"]) for o, r in zip(outputs, recs)])
    if metric == "top1":
        return np.array([metrics.top1([o["prediction"]], [r["answers"]]) for o, r in zip(outputs, recs)])
    return None


def draws(n_queries: int, n_draws: int = DRAWS, seed: int = 0) -> np.ndarray:
    """int[n_draws, n_queries]: positions drawn with replacement (one matrix serves every cell of a task)."""
    return np.random.default_rng(seed).integers(0, n_queries, size=(n_draws, n_queries))


def set_level_draws(score_fn: Callable[[list, list], float], outputs: Sequence[Mapping[str, Any]],
                    queries: Sequence[Mapping[str, Any]], positions: np.ndarray) -> np.ndarray:
    """[<= n_draws] score_fn (harness.score_outputs of a set-level metric) on each drawn cell, rebuilt with
    distinct indices and ids so that a query drawn twice counts twice. A draw on which the metric is undefined
    (ROC-AUC of one class, NDCG without an annotated round: score_fn raises ValueError) is left out."""
    out = []
    for row in positions:
        drawn_queries = [dict(queries[outputs[p]["index"]], id=f"draw{j}") for j, p in enumerate(row)]
        drawn = [dict(outputs[p], index=j, id=f"draw{j}") for j, p in enumerate(row)]
        try:
            out.append(score_fn(drawn, drawn_queries))
        except ValueError:
            continue
    return np.array(out)


def paired_draws(per_query: Mapping[int, Sequence[float]], query_index: Mapping[int, Sequence[int]],
                 n_draws: int = DRAWS, seed: int = 0) -> dict[int, np.ndarray]:
    """{shots: [n_draws] mean of the drawn queries' scores}, one task's cells drawn on the same queries.

    per_query / query_index: each cell's per-query scores and the query indices they belong to (the cell
    records evaluate.py writes). Raises when the cells did not answer the same queries (their draws would not
    pair)."""
    shots = sorted(per_query)
    order = {s: np.argsort(np.asarray(query_index[s])) for s in shots}
    first = np.asarray(query_index[shots[0]])[order[shots[0]]]
    for s in shots[1:]:
        if not np.array_equal(np.asarray(query_index[s])[order[s]], first):
            raise ValueError(f"cells at {shots[0]} and {s} shots answered different queries: they cannot be paired "
                             "(evaluate them with the same --max_queries)")
    positions = draws(len(first), n_draws, seed)
    return {s: np.asarray(per_query[s], dtype=np.float64)[order[s]][positions].mean(axis=1) for s in shots}


def interval(samples: np.ndarray, level: float = LEVEL) -> tuple[float, float] | None:
    """The percentile interval of the draws; None when there are none (no draw where the metric is defined)."""
    if len(samples) == 0:
        return None
    tail = 100.0 * (1.0 - level) / 2.0
    lo, hi = np.percentile(np.asarray(samples, dtype=np.float64), [tail, 100.0 - tail])
    return float(lo), float(hi)


def changes(samples: Mapping[int, np.ndarray]) -> dict[str, np.ndarray]:
    """{'a->b': draws of score(b) - score(a)} for consecutive shot counts a < b of paired draws."""
    shots = sorted(samples)
    return {f"{a}->{b}": samples[b] - samples[a] for a, b in zip(shots, shots[1:])}
