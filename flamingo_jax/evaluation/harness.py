"""The few-shot harness: one (task, shots, seed, selection) cell -> predictions -> a metric.

    data = EvalData(config.data)                       # adapter over flamingo_jax.data.eval_sets
    ev = Evaluator(model, params, data, batch_size=8)
    outputs = ev.predict('captions', shots=4, seed=0, selection='random', shard=(0, 1))
    score = ev.score('captions', outputs)              # fraction (CIDEr 0.86, accuracy 0.55, AUC 0.61)

Per eval-set kind (flamingo_jax.data.schema): captions and video_captions -> beam search, 20 new tokens,
CIDEr; vqa -> beam search, 5 new tokens, VQA accuracy; video_qa -> 5 new tokens, top-1 (MSVD-QA);
classification -> ranking "no"/"yes" by log-likelihood, ROC-AUC of ll(yes) - ll(no). Generation stops at
`<EOC>` or EOS; `<image>` is never generated.

Batches: queries are grouped in fixed-size batches (the last is padded with copies, dropped afterwards),
prompts left-padded to a power-of-two bucket, media padded to shots + 1 images, so each cell compiles
once or twice. Query q of a shard is query index q * num_shards + shard_index, and support sets depend only
on (seed, query index): any sharding gives the same predictions.
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Any, Mapping, Sequence

import jax
import ml_collections
import numpy as np

from flamingo_jax.evaluation import decoding, metrics, prompts, rices
from flamingo_jax.progress import Progress

OPEN_ENDED = {  # kind -> (max new tokens, metric)
    "captions": (20, "cider"),
    "video_captions": (20, "cider"),
    "vqa": (5, "vqa_accuracy"),
    "video_qa": (5, "top1"),
}
CLOSE_ENDED = {"classification": "roc_auc"}
# Paper / DEV names accepted for the world's analogues.
ALIASES = {"coco": "captions", "vqav2": "vqa", "okvqa": "knowledge_vqa", "msvdqa": "video_qa",
           "msvd_qa": "video_qa", "vatex": "video_captions"}


def metric_name(kind: str) -> str:
    if kind in OPEN_ENDED:
        return OPEN_ENDED[kind][1]
    if kind in CLOSE_ENDED:
        return CLOSE_ENDED[kind]
    raise ValueError(f"no metric for eval-set kind {kind!r}")


class EvalData:
    """The data issue's eval-set API behind a small adapter (the only place that knows it)."""

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
        raise ValueError(f"unknown eval set {task!r}; configured: {sorted(sets)}")

    def kind(self, task: str) -> str:
        return self.config.eval_sets[task].kind

    def frames(self, task: str) -> int:
        return int(self.config.eval_sets[task].frames) if self.kind(task).startswith("video") else 1

    def source(self, task: str, split: str) -> Sequence[Mapping[str, Any]]:
        if (task, split) not in self._sources:
            self._sources[task, split] = self._eval_sets.eval_source(self.config, task, split)
        return self._sources[task, split]

    def media(self, task: str, record: Mapping[str, Any]) -> np.ndarray:
        """float32[F, S, S, 3] in [0, 1]."""
        return np.asarray(self._eval_sets.record_media(self.config, task, record))[0]

    def identity(self, task: str) -> dict:
        """What determines the support pool's content (the RICES cache key)."""
        e = self.config.eval_sets[task]
        world = self.config.world.to_dict() if e.builder == "flamingo_world" else {}
        return dict(task=task, entry=e.to_dict(), world=world, image_size=self.config.image_size,
                    source=self.config.source, size=len(self.source(task, "support")))


@dataclasses.dataclass
class Evaluator:
    """Runs cells for one model and params. cache_dir: where RICES features are cached. mesh: the params'
    mesh, when they are sharded (decoding.Decoder then runs every batch split over the mesh; batch_size must
    divide data * fsdp); results come back by explicit jax.device_get."""

    model: Any
    params: Any
    data: EvalData
    batch_size: int = 8
    num_beams: int = 3
    length_penalty: float = 0.0
    cache_dir: str = ""
    progress: bool = True
    mesh: Any = None

    def __post_init__(self):
        v = self.data.vocab
        shardings = None if self.mesh is None else jax.tree.map(lambda x: x.sharding, self.params)
        self.decoder = decoding.decoder_for(self.model, pad_id=v.pad_id, mesh=self.mesh, param_shardings=shardings)
        self._vision_hash: str | None = None

    # ------------------------------------------------------------------ selection
    def _rices_features(self, task: str, records: Sequence[Mapping[str, Any]]) -> np.ndarray:
        out = []
        for i in range(0, len(records), self.batch_size):
            batch = [records[j] for j in range(i, min(i + self.batch_size, len(records)))]  # sources do not slice
            media = np.stack([self.data.media(task, r) for r in batch])  # [b, F, ...]
            b, f = media.shape[:2]
            n = self.batch_size * f  # fixed shape: pad to a full batch
            flat = np.zeros((n, *media.shape[2:]), np.float32)
            flat[:b * f] = media.reshape(b * f, *media.shape[2:])
            feats = jax.device_get(self.decoder.vision_features(self.params, flat))[:b * f]
            out.append(feats.reshape(b, f, -1).mean(axis=1))
        return rices.normalize(np.concatenate(out))

    def _support_features(self, task: str) -> np.ndarray:
        if self._vision_hash is None:
            self._vision_hash = rices.params_hash(self.params["vision"])
        pool = self.data.source(task, "support")
        key = dict(vision=self._vision_hash, data=self.data.identity(task))
        cache_dir = self.cache_dir or "/tmp/flamingo_jax_rices"
        return rices.cached_features(cache_dir, key, lambda: self._rices_features(task, pool))

    def _choose(self, task, shots, seed, selection, indices, queries, pool_size):
        n = shots if shots > 0 else 2  # zero-shot: two text-only examples
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
        """This shard's outputs: [{'id', 'index', 'prediction'} (+ 'score' for close-ended)] in query order."""
        kind = self.data.kind(task)
        vocab = self.data.vocab
        pool = self.data.source(task, "support")
        queries = self.data.source(task, "query")
        total = len(queries) if not max_queries else min(max_queries, len(queries))
        mine = list(range(shard[0], total, shard[1]))
        prog = Progress(f"[evaluate] {task} {shots}-shot seed {seed} shard {shard[0]}/{shard[1]}:", len(mine),
                        unit="queries", enabled=self.progress, stream=sys.stderr)
        support_media: dict[int, np.ndarray] = {}
        frames = self.data.frames(task)
        outputs = []
        for start in range(0, len(mine), self.batch_size):
            idx = mine[start:start + self.batch_size]
            recs = [queries[i] for i in idx]
            chosen = self._choose(task, shots, seed, selection, idx, recs, len(pool))
            built = [prompts.build_prompt(vocab, kind, [pool[j] for j in sup], sup, rec, text_only=shots == 0,
                                          seed=seed, query_index=q)
                     for q, rec, sup in zip(idx, recs, chosen)]
            rows = [p.tokens for p in built] + [built[-1].tokens] * (self.batch_size - len(built))
            toks, tmask = decoding.left_pad(rows, decoding.bucket(max(len(r) for r in rows), 32), vocab.pad_id)
            t = shots + 1
            size = self.data.config.image_size
            images = np.zeros((self.batch_size, t, frames, size, size, 3), np.float32)
            image_mask = np.zeros((self.batch_size, t), bool)
            for r, (p, rec) in enumerate(zip(built, recs)):
                for m, j in enumerate(p.support):
                    if j not in support_media:
                        support_media[j] = self.data.media(task, pool[j])
                    images[r, m] = support_media[j]
                images[r, len(p.support)] = self.data.media(task, rec)
                image_mask[r, :len(p.support) + 1] = True
            visual = self.decoder.encode(self.params, images)  # once per prompt
            outputs += self._run_batch(kind, toks, tmask, visual, image_mask, idx, recs)
            prog.update(len(idx))
        return outputs

    def _run_batch(self, kind, toks, tmask, visual, image_mask, idx, recs) -> list[dict]:
        vocab = self.data.vocab
        n = len(idx)
        if kind in CLOSE_ENDED:
            cands = prompts.candidate_tokens(vocab, kind)
            ctoks, cmask = decoding.right_pad(cands, max(map(len, cands)), vocab.pad_id)
            ll = jax.device_get(self.decoder.rank(self.params, toks, tmask, visual, image_mask, ctoks, cmask))[:n]
            return [dict(id=r["id"], index=i, prediction=prompts.CLASS_NAMES[int(np.argmax(l))],
                         score=float(l[1] - l[0])) for i, r, l in zip(idx, recs, ll)]
        max_new = OPEN_ENDED[kind][0]
        gen = decoding.GenerationConfig(max_new_tokens=max_new, num_beams=self.num_beams,
                                        length_penalty=self.length_penalty,
                                        stop_ids=(vocab.eoc_id, vocab.eos_id), banned_ids=(vocab.image_id,))
        out = jax.device_get(self.decoder.generate(self.params, toks, tmask, visual, image_mask, gen))
        res = []
        for r, (i, rec) in enumerate(zip(idx, recs)):
            ids = out["tokens"][r, 0, :out["lengths"][r, 0]]
            text = prompts.postprocess(kind, vocab.decode(ids, markers=False))
            res.append(dict(id=rec["id"], index=i, prediction=text))
        return res

    def score(self, task: str, outputs: Sequence[Mapping[str, Any]]) -> float:
        """The cell's metric as a fraction, from all shards' outputs."""
        return score_outputs(self.data.kind(task), outputs, self.data.source(task, "query"))


def score_outputs(kind: str, outputs: Sequence[Mapping[str, Any]], queries: Sequence[Mapping[str, Any]]) -> float:
    recs = {o["index"]: queries[o["index"]] for o in outputs}
    metric = metric_name(kind)
    if metric == "cider":
        return metrics.cider({o["id"]: o["prediction"] for o in outputs},
                             {recs[o["index"]]["id"]: recs[o["index"]]["captions"] for o in outputs})
    if metric == "vqa_accuracy":
        return float(np.mean([metrics.vqa_accuracy(o["prediction"], recs[o["index"]]["answers"]) for o in outputs]))
    if metric == "top1":
        return metrics.top1([o["prediction"] for o in outputs], [recs[o["index"]]["answers"] for o in outputs])
    if metric == "roc_auc":
        return metrics.roc_auc([o["score"] for o in outputs], [recs[o["index"]]["label"] for o in outputs])
    raise ValueError(metric)
