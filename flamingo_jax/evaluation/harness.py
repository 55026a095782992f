"""The few-shot harness: one (task, shots, seed, selection) cell -> predictions -> a metric.

    data = EvalData(config.data)                       # adapter over flamingo_jax.data.eval_sets
    ev = Evaluator(model, params, data, batch_size=8)
    outputs = ev.predict('captions', shots=4, seed=0, selection='random', shard=(0, 1))
    score = ev.score('captions', outputs)              # fraction (CIDEr 0.86, accuracy 0.55, AUC 0.61)

Per eval-set kind (flamingo_jax.data.schema): captions and video_captions -> beam search, 20 new tokens,
CIDEr; vqa -> beam search, 5 new tokens, VQA accuracy; video_qa -> 5 new tokens, top-1 (MSVD-QA);
classification -> ranking "no"/"yes" by log-likelihood, ROC-AUC of ll(yes) - ll(no); image_classification /
video_retrieval -> ranking every class name of the eval set (top-1 accuracy / RareAct mWAP); dialog /
video_choice -> ranking each record's own options (VisDial NDCG / STAR accuracy). An eval-set entry's
`metric` overrides its kind's (iVQA accuracy, NExT-QA WUPS). Generation stops at `<EOC>` or EOS; `<image>` is
never generated. Close-ended cells with ensemble=K average the candidates' log-likelihoods over K orders of
the shots (the paper's prompt ensembling, Appendix A.2).

Batches: queries are grouped in fixed-size batches (the last is padded with copies, dropped afterwards),
prompts left-padded to a power-of-two bucket, media padded to shots + 1 images, so each cell compiles
once or twice. Query q of a shard is query index q * num_shards + shard_index, and support sets depend only
on (seed, query index): any sharding gives the same predictions.

Processes: with a mesh spanning several processes (jax.distributed) every batch is one program over the
global batch, and the shard of process i is (i, process count): each process builds its own queries'
prompts into its rows of the batch and reads back its rows (flamingo_jax.evaluation.multihost); all run the
same number of batches (a process out of queries runs query 0 again, dropped) and pad prompts to the same
length. flamingo_jax.evaluate gathers the shards' outputs to process 0, which scores them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
from typing import Any, Mapping, Sequence

import jax
import ml_collections
import numpy as np

from flamingo_jax.evaluation import bootstrap, decoding, heldout_metrics, metrics, paper_tables, prompts, rices
from flamingo_jax.evaluation import multihost
from flamingo_jax.progress import Progress

OPEN_ENDED = {  # kind -> (max new tokens, metric)
    "captions": (20, "cider"),
    "video_captions": (20, "cider"),
    "vqa": (5, "vqa_accuracy"),
    "video_qa": (5, "top1"),
}
CLOSE_ENDED = {
    "classification": "roc_auc", "image_classification": "accuracy", "video_classification": "accuracy",
    "video_retrieval": "mwap", "dialog": "ndcg", "video_choice": "accuracy"
}
# Paper / DEV names accepted for the world's analogues.
ALIASES = dict(paper_tables.DEV_TO_WORLD, msvd_qa="video_qa")


def metric_name(kind: str, metric: str = "") -> str:
    if metric:
        return metric
    if kind in OPEN_ENDED:
        return OPEN_ENDED[kind][1]
    if kind in CLOSE_ENDED:
        return CLOSE_ENDED[kind]
    raise ValueError(f"no metric for eval-set kind {kind!r}")


class EvalData:
    """flamingo_jax.data's eval-set API behind a small adapter (the only place that knows it)."""

    def __init__(self, data_config: ml_collections.ConfigDict, vocab=None):
        from flamingo_jax.data import eval_sets, mixture

        self.config = data_config
        self._eval_sets = eval_sets
        self.vocab = vocab if vocab is not None else mixture.make_vocab(data_config)
        self._sources: dict = {}

    def resolve(self, task: str) -> str:
        sets = self.config.get("eval_sets") or {}
        if task in sets:
            return task
        if ALIASES.get(task) in sets:
            return ALIASES[task]
        self._eval_sets.entry(self.config, task)  # a world task outside the default five, or a one-line error
        return task

    def kind(self, task: str) -> str:
        return self._eval_sets.entry(self.config, task).kind

    def metric(self, task: str) -> str:
        """The entry's metric, else its kind's (adapters that serve tasks without entries get the kind's)."""
        entry = (self.config.get("eval_sets") or {}).get(task) or self._eval_sets.world_extra_eval_sets().get(task)
        return metric_name(self.kind(task), entry.get("metric", "") if entry else "")

    def max_new_tokens(self, task: str) -> int:
        """How many tokens an open-ended task's answer may run to: its entry's max_new_tokens, else its kind's."""
        return int(self._eval_sets.entry(self.config, task).get("max_new_tokens", 0)) or OPEN_ENDED[self.kind(task)][0]

    def frames(self, task: str) -> int:
        return int(self._eval_sets.entry(self.config, task).frames) if self.kind(task).startswith("video") else 1

    def class_names(self, task: str) -> list[str]:
        """The class list of a class-ranking task; RareAct's: "verb noun" per class id, from its rows."""
        if self.kind(task) != "video_retrieval":
            return self._eval_sets.class_names(self.config, task)
        rows = self.source(task, "query")
        by_id = {int(r["class_id"]): f"{r['verb']} {r['noun']}" for r in (rows[i] for i in range(len(rows)))}
        return [by_id[k] for k in sorted(by_id)]

    def source(self, task: str, split: str) -> Sequence[Mapping[str, Any]]:
        if (task, split) not in self._sources:
            self._sources[task, split] = self._eval_sets.eval_source(self.config, task, split)
        return self._sources[task, split]

    def media(self, task: str, record: Mapping[str, Any]) -> np.ndarray:
        """float32[F, S, S, 3] in [0, 1]."""
        return np.asarray(self._eval_sets.record_media(self.config, task, record))[0]

    def identity(self, task: str) -> dict:
        """What determines the support pool's content (the RICES cache key)."""
        e = self._eval_sets.entry(self.config, task)
        world = self.config.world.to_dict() if e.builder == "flamingo_world" else {}
        return dict(task=task, entry=e.to_dict(), world=world, image_size=self.config.image_size,
                    source=self.config.source, size=len(self.source(task, "support")))

    def fingerprint(self) -> str:
        return data_fingerprint(self.config)


def data_fingerprint(data_config: ml_collections.ConfigDict) -> str:
    """A short hash of what defines the eval sets' records and prompts (their entries, the world that generates
    them, the image size, the source): part of a run's settings, so that cells cached for one world (e.g.
    without episode styles) are neither reused nor summarised with those of another."""
    blob = json.dumps(
        dict(world=data_config.world.to_dict(), eval_sets=data_config.eval_sets.to_dict(),
             image_size=data_config.image_size, source=data_config.source), sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:8]


@dataclasses.dataclass
class Evaluator:
    """Runs cells for one model and params. cache_dir: where RICES features are cached. mesh: the params'
    mesh, when they are sharded (decoding.Decoder then runs every batch split over the mesh; batch_size must
    divide data * fsdp); this process's rows of each batch go to the mesh by explicit transfers and come back by
    explicit jax.device_get (multihost.to_global / to_local). On a mesh spanning processes, predict and the RICES
    features are collectives: every process calls them together, each with its own shard."""

    model: Any
    params: Any
    data: EvalData
    batch_size: int = 8
    num_beams: int = 3
    length_penalty: float = 0.0
    cache_dir: str = ""
    progress: bool = True
    mesh: Any = None
    ensemble: int = 1  # close-ended: average over this many orders of the shots
    rank_chunk: int = 64  # class-list candidates scored per Decoder.rank call
    # shots shown without their media (as the zero-shot prompt's text-only examples): a diagnostic that tells what the
    # shots' images add to their text (README, "In-context learning on the world")
    text_only_shots: bool = False

    def __post_init__(self):
        v = self.data.vocab
        shardings = None if self.mesh is None else jax.tree.map(lambda x: x.sharding, self.params)
        self.decoder = decoding.decoder_for(self.model, pad_id=v.pad_id, mesh=self.mesh, param_shardings=shardings)
        self._vision_hash: str | None = None
        self.processes = multihost.process_count(self.mesh)
        self.rows = multihost.local_rows(self.mesh, self.batch_size)  # this process's rows of every batch

    def _put(self, x):
        """This process's rows (host) -> the global batch on the mesh (explicit transfers); device arrays as they are."""
        return multihost.to_global(self.mesh, x) if isinstance(x, np.ndarray) else x

    def _batches(self, n: int) -> int:
        """How many batches this process runs for its n items: the same on every process (each batch is one
        collective program), so the largest count over processes."""
        count = -(-n // self.rows)
        return multihost.maximum(count) if self.processes > 1 else count

    # ------------------------------------------------------------------ selection
    def _rices_features(self, task: str, records: Sequence[Mapping[str, Any]]) -> np.ndarray:
        """This process's records -> their L2-normalised features float32[len(records), D]."""
        f, size = self.data.frames(task), self.data.config.image_size
        out = []
        for k in range(self._batches(len(records))):
            batch = [records[j] for j in range(k * self.rows, min((k + 1) * self.rows, len(records)))]
            flat = np.zeros((self.rows * f, size, size, 3), np.float32)  # fixed shape: pad to a full batch
            if batch:
                media = np.stack([self.data.media(task, r) for r in batch])  # [b, F, ...]
                flat[:len(batch) * f] = media.reshape(len(batch) * f, *media.shape[2:])
            feats = multihost.to_local(self.decoder.vision_features(self.params, self._put(flat)))
            out.append(feats[:len(batch) * f].reshape(len(batch), f, feats.shape[-1]).mean(axis=1))
        return rices.normalize(np.concatenate(out))

    def _support_features(self, task: str) -> np.ndarray:
        if self._vision_hash is None:
            self._vision_hash = rices.params_hash(self.params["vision"])
        pool = self.data.source(task, "support")
        key = dict(vision=self._vision_hash, data=self.data.identity(task))
        cache_dir = self.cache_dir or "/tmp/flamingo_jax_rices"
        if self.processes == 1:
            return rices.cached_features(cache_dir, key, lambda: self._rices_features(task, pool))
        i, n = jax.process_index(), self.processes

        def compute():  # the pool split round-robin over the processes, every part gathered everywhere
            parts = multihost.gather_rows(self._rices_features(task, [pool[j] for j in range(i, len(pool), n)]))
            out = np.zeros((len(pool), parts[0].shape[-1]), np.float32)
            for p, part in enumerate(parts):
                out[p::n] = part
            return out

        # a collective: computed by every process unless every one has the features cached
        return rices.cached_features(cache_dir, key, compute, agree=multihost.all_true)

    def _choose(self, task, shots, seed, selection, indices, queries, pool_size):
        n = shots or prompts.text_only_shots(self.data.kind(task), shots)  # zero-shot open-ended: two text-only
        if n == 0:
            return [[] for _ in indices]
        if selection == "random":
            return [prompts.random_support(pool_size, n, seed, q) for q in indices]
        if selection == "rices":
            sup = self._support_features(task)
            qf = self._rices_features(task, queries)
            return [list(map(int, row)) for row in rices.select(sup, qf, n)]
        raise ValueError(f"selection must be 'random' or 'rices', got {selection!r}")

    # ------------------------------------------------------------------ cells
    def predict(self, task: str, shots: int, seed: int, selection: str = "random", shard: tuple[int, int] = (0, 1),
                max_queries: int = 0) -> list[dict]:
        """This shard's outputs: [{'id', 'index', 'prediction'} (+ 'logprob' for open-ended, 'score' for close-ended)] in
        query order."""
        kind = self.data.kind(task)
        # zero-shot close-ended prompts show no support example: sets without a support pool (RareAct) run too
        pool = self.data.source(task, "support") if shots or prompts.text_only_shots(kind, 0) else []
        queries = self.data.source(task, "query")
        total = len(queries) if not max_queries else min(max_queries, len(queries))
        if self.processes > 1 and tuple(shard) != (jax.process_index(), self.processes):
            raise ValueError(f"on a mesh of {self.processes} processes each evaluates its own shard "
                             f"({jax.process_index()}, {self.processes}), not {tuple(shard)}")
        mine = list(range(shard[0], total, shard[1]))
        prog = Progress(f"[evaluate] {task} {shots}-shot seed {seed} shard {shard[0]}/{shard[1]}:", len(mine),
                        unit="queries", enabled=self.progress, stream=sys.stderr)
        support_media: dict[int, np.ndarray] = {}
        classes = self.data.class_names(task) if kind in prompts.CLASS_LIST_KINDS else None
        outputs = []
        for k in range(self._batches(len(mine))):
            # a process out of queries (several processes) runs query 0 again; never its own (shard 0 has the
            # most queries), so dropped below
            idx = mine[k * self.rows:(k + 1) * self.rows] or [0]
            recs = [queries[i] for i in idx]
            chosen = self._choose(task, shots, seed, selection, idx, recs, len(pool))
            batch = (task, kind, shots, seed, idx, recs, pool, support_media, classes)
            if kind not in CLOSE_ENDED:
                outputs += self._run_batch(kind, self.data.max_new_tokens(task), *self._inputs(*batch, chosen), idx,
                                           recs)
            else:  # prompt ensembling: the candidates' log-likelihoods averaged over orders of the shots
                n_orders = self.ensemble if shots > 0 else 1
                orders = [prompts.shot_orders(len(sup), n_orders, seed, q) for q, sup in zip(idx, chosen)]
                summed = None
                for e in range(n_orders):
                    permuted = [[sup[i] for i in o[e]] for sup, o in zip(chosen, orders)]
                    ll = self._rank(kind, *self._inputs(*batch, permuted), recs, classes)
                    summed = ll if summed is None else [x + y for x, y in zip(summed, ll)]
                outputs += self._close_outputs(kind, idx, recs, [x / n_orders for x in summed], classes)
            prog.update(len(idx))
        return [o for o in outputs if o["index"] in set(mine)]

    def _inputs(self, task, kind, shots, seed, idx, recs, pool, support_media, classes, chosen):
        """Left-padded prompt tokens and masks [B, L], visual tokens (encoded once per prompt) and the image
        mask [B, shots + 1] of one batch of queries with the given support indices (in prompt order)."""
        vocab = self.data.vocab
        built = [
            prompts.build_prompt(vocab, kind, [pool[j] for j in sup], sup, rec, text_only=shots == 0 or
                                 self.text_only_shots, seed=seed, query_index=q, classes=classes)
            for q, rec, sup in zip(idx, recs, chosen)
        ]
        rows = [p.tokens for p in built] + [built[-1].tokens] * (self.rows - len(built))
        length = decoding.bucket(max(len(r) for r in rows), 32)
        length = multihost.maximum(length) if self.processes > 1 else length  # one shape on every process
        toks, tmask = decoding.left_pad(rows, length, vocab.pad_id)
        t = shots + 1
        size = self.data.config.image_size
        images = np.zeros((self.rows, t, self.data.frames(task), size, size, 3), np.float32)
        image_mask = np.zeros((self.rows, t), bool)
        for r, (p, rec) in enumerate(zip(built, recs)):
            for m, j in enumerate(p.support):
                if j not in support_media:
                    support_media[j] = self.data.media(task, pool[j])
                images[r, m] = support_media[j]
            images[r, len(p.support)] = self.data.media(task, rec)
            image_mask[r, :len(p.support) + 1] = True
        visual = self.decoder.encode(self.params, self._put(images))  # once per prompt
        return toks, tmask, visual, image_mask

    def _rank(self, kind, toks, tmask, visual, image_mask, recs, classes) -> list[np.ndarray]:
        """Log-likelihood of every candidate, per query: float[C] (C = the class list, or the record's options)."""
        vocab = self.data.vocab
        if kind not in prompts.OPTION_KINDS:  # one candidate list for the whole batch
            cands = prompts.candidate_tokens(vocab, kind, classes)
            return list(self._rank_rows(toks, tmask, visual, image_mask, cands)[:len(recs)])
        # Each query ranks its own options, the whole batch in one Decoder.rank_per_row call: on a mesh spanning
        # processes that call is a collective, every process passing its own rows' options, so the options'
        # shape must be the same everywhere. The count is rounded up to a multiple of 8 (a benchmark's count is
        # nearly fixed, VisDial 100, STAR 4: a power of two would waste a fifth of VisDial's rows) and the
        # length to a power of two (it varies by batch), so few shapes compile.
        options = [prompts.candidate_tokens(vocab, kind, rec["options"]) for rec in recs]
        options += [options[-1]] * (self.rows - len(options))  # the batch's padding rows (copies, dropped)
        count = -(-max(map(len, options)) // 8) * 8
        width = decoding.bucket(max(len(c) for cands in options for c in cands), 4)
        if self.processes > 1:
            count, width = multihost.maximum(count), multihost.maximum(width)
        ctoks, cmask = decoding.pad_candidate_rows(options, count, width, vocab.pad_id)
        ll = multihost.to_local(
            self.decoder.rank_per_row(self.params, *map(self._put, (toks, tmask)), visual, self._put(image_mask),
                                      *map(self._put, (ctoks, cmask))))
        return [np.asarray(ll[r, :len(rec["options"])]) for r, rec in enumerate(recs)]

    def _rank_rows(self, toks, tmask, visual, image_mask, cands) -> np.ndarray:
        """float[B, C] via Decoder.rank, rank_chunk candidates per call (padded to one shape: one compile)."""
        vocab = self.data.vocab
        width, chunk = max(map(len, cands)), min(self.rank_chunk, len(cands))
        parts = []
        for i in range(0, len(cands), chunk):
            part = cands[i:i + chunk]
            ctoks, cmask = decoding.right_pad(part + [part[-1]] * (chunk - len(part)), width, vocab.pad_id)
            ll = multihost.to_local(
                self.decoder.rank(self.params, *map(self._put, (toks, tmask)), visual, self._put(image_mask), ctoks,
                                  cmask))
            parts.append(np.asarray(ll)[:, :len(part)])
        return np.concatenate(parts, axis=1)

    def _close_outputs(self, kind, idx, recs, lls, classes) -> list[dict]:
        res = []
        for i, rec, ll in zip(idx, recs, lls):
            best = int(np.argmax(ll))
            o = dict(id=rec["id"], index=i)
            if kind in prompts.CLASSIFICATION_KINDS:
                o.update(prediction=prompts.CLASS_NAMES[best], score=float(ll[1] - ll[0]))
            elif kind in ("image_classification", "video_classification", "video_choice"):
                o.update(prediction=(classes or rec.get("options"))[best], choice=best)
            else:  # dialog, video_retrieval: their metrics rank every candidate's score
                o.update(prediction=(rec["options"] if kind == "dialog" else classes)[best],
                         scores=[float(x) for x in ll])
            res.append(o)
        return res

    def _run_batch(self, kind, max_new, toks, tmask, visual, image_mask, idx, recs) -> list[dict]:
        vocab = self.data.vocab
        gen = decoding.GenerationConfig(max_new_tokens=max_new, num_beams=self.num_beams,
                                        length_penalty=self.length_penalty, stop_ids=(vocab.eoc_id, vocab.eos_id),
                                        banned_ids=(vocab.image_id, ))
        out = multihost.to_local(
            self.decoder.generate(self.params, *map(self._put, (toks, tmask)), visual, self._put(image_mask), gen))
        res = []
        for r, (i, rec) in enumerate(zip(idx, recs)):
            ids = out["tokens"][r, 0, :out["lengths"][r, 0]]
            text = prompts.postprocess(kind, vocab.decode(ids, markers=False))
            # logprob: the chosen hypothesis' score (Decoder.generate), for checks finer than the text
            res.append(dict(id=rec["id"], index=i, prediction=text, logprob=float(out["scores"][r, 0])))
        return res

    def score(self, task: str, outputs: Sequence[Mapping[str, Any]]) -> float:
        """The cell's metric as a fraction, from all shards' outputs."""
        return score_outputs(self.data.kind(task), outputs, self.data.source(task, "query"), self.data.metric(task))

    def per_query(self, task: str, outputs: Sequence[Mapping[str, Any]]) -> np.ndarray | None:
        """[len(outputs)] per-query scores whose mean is score(), or None for a set-level metric
        (evaluation.bootstrap)."""
        return bootstrap.per_query_scores(self.data.metric(task), outputs, self.data.source(task, "query"))

    def interval(self, task: str, outputs: Sequence[Mapping[str, Any]],
                 per_query: np.ndarray | None = None) -> tuple[float, float] | None:
        """The 95% percentile-bootstrap interval of score() over the cell's queries (evaluation.bootstrap); None
        when the metric is defined on no draw."""
        outputs = sorted(outputs, key=lambda o: o["index"])
        per_query = self.per_query(task, outputs) if per_query is None else per_query
        positions = bootstrap.draws(len(outputs))
        if per_query is not None:
            return bootstrap.interval(np.asarray(per_query)[positions].mean(axis=1))
        kind, queries, metric = self.data.kind(task), self.data.source(task, "query"), self.data.metric(task)
        return bootstrap.interval(
            bootstrap.set_level_draws(lambda o, q: score_outputs(kind, o, q, metric), outputs, queries, positions))


def score_outputs(kind: str, outputs: Sequence[Mapping[str, Any]], queries: Sequence[Mapping[str, Any]],
                  metric: str = "") -> float:
    recs = {o["index"]: queries[o["index"]] for o in outputs}
    metric = metric_name(kind, metric)
    if metric == "cider":
        return metrics.cider({o["id"]: o["prediction"]
                              for o in outputs},
                             {recs[o["index"]]["id"]: recs[o["index"]]["captions"]
                              for o in outputs})
    if metric == "vqa_accuracy":
        return float(np.mean([metrics.vqa_accuracy(o["prediction"], recs[o["index"]]["answers"]) for o in outputs]))
    if metric == "top1":
        return metrics.top1([o["prediction"] for o in outputs], [recs[o["index"]]["answers"] for o in outputs])
    if metric == "roc_auc":
        return metrics.roc_auc([o["score"] for o in outputs], [recs[o["index"]]["label"] for o in outputs])
    if metric == "accuracy":
        key = "answer_index" if kind == "video_choice" else "label"
        return heldout_metrics.accuracy([o["choice"] for o in outputs], [recs[o["index"]][key] for o in outputs])
    if metric == "ndcg":  # rounds with dense relevance annotations only
        rated = [o for o in outputs if recs[o["index"]].get("relevance")]
        return heldout_metrics.ndcg([recs[o["index"]]["relevance"] for o in rated], [o["scores"] for o in rated])
    if metric == "mwap":  # score columns follow the sorted class ids of the whole query split
        column = {c: j for j, c in enumerate(sorted({int(queries[i]["class_id"]) for i in range(len(queries))}))}
        rows = [dict(recs[o["index"]], class_id=column[int(recs[o["index"]]["class_id"])]) for o in outputs]
        return heldout_metrics.rareact_mwap(np.array([o["scores"] for o in outputs]), rows)
    if metric == "ivqa_accuracy":
        return float(
            np.mean([heldout_metrics.ivqa_accuracy(o["prediction"], recs[o["index"]]["answers"]) for o in outputs]))
    if metric == "wups":
        return float(np.mean([heldout_metrics.wups(o["prediction"], recs[o["index"]]["answers"][0]) for o in outputs]))
    raise ValueError(metric)
