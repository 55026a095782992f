"""Evaluation sets for the few-shot harness: records by index, and their media as the model takes them.

    src = eval_source(config.data, 'vqa', 'query')      # random access: len(src), src[i] -> record dict
    media = record_media(config.data, 'vqa', src[i])   # float32[1, F, S, S, 3] in [0, 1], as in training

Each entry of config.data.eval_sets names a builder, its config, its kind (schema.py: captions, vqa,
video_qa, video_captions, classification, image_classification, dialog, video_choice, video_retrieval),
which split is the few-shot SUPPORT pool and which the QUERY split, the frames and FPS a video is sampled at,
its metric ('' = the kind's default), the class names of a class-ranking task, and the paper's split for it.
The world's five DEV analogues are configured by default (world_extra_eval_sets() adds creature_kind, an
ImageNet-style task, resolvable by name); real sets read prepared TFDS builders from config.data.data_dir /
manual_dir (real_eval_sets() gives their entries).

Video follows the paper's inference protocol (Section 3.1 / Appendix A.1: 30 frames at 3 FPS, the temporal
embeddings learnt on 8 frames linearly interpolated, models/resampler.py): VIDEO_FRAMES / VIDEO_FPS.

DEV protocol (paper Appendix B.1, the DEV benchmarks): the paper tuned on validation subsets carved from the TRAINING sets, 2048
support examples and 5000 queries for COCO, 1024 for the others. The split names 'dev_support' and
'dev_query' carve them from an entry's 'train' split (disjoint, seeded); dev_protocol(sets) switches every entry.
Prompt construction and metrics belong to flamingo_jax.evaluation; this module only supplies data.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import ml_collections
import numpy as np

from flamingo_jax.data import images as img_lib
from flamingo_jax.data import mixture

VIDEO_KINDS = ("video_qa", "video_captions", "video_choice", "video_retrieval", "video_classification")
VIDEO_FRAMES, VIDEO_FPS = 30, 3.0  # the paper's video evaluation: 30 frames at 3 FPS
DEV_SUPPORT = 2048  # the DEV protocol's support pool, carved from the training split
DEV_QUERIES = 1024  # and its queries (COCO: 5000)
DEV_SEED = 0


def _entry(builder: str, builder_config: str, kind: str, support: str, query: str, frames: int = 1, fps: float = 1.0, *,
           metric: str = "", classes: Sequence[str] = (), paper_split: str = "",
           dev_queries: int = DEV_QUERIES) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(
        dict(builder=builder, builder_config=builder_config, kind=kind, support=support, query=query, frames=frames,
             fps=fps, manual_dir="", metric=metric, classes=list(classes), paper_split=paper_split,
             dev_queries=dev_queries))


def _video(builder: str, builder_config: str, kind: str, support: str, query: str, **kw):
    return _entry(builder, builder_config, kind, support, query, VIDEO_FRAMES, VIDEO_FPS, **kw)


def world_eval_sets() -> ml_collections.ConfigDict:
    """The world's analogues of the paper's DEV benchmarks (COCO, VQAv2, OKVQA, MSVDQA, VATEX)."""
    return ml_collections.ConfigDict({
        "captions": _entry("flamingo_world", "captions", "captions", "train", "test"),
        "vqa": _entry("flamingo_world", "vqa", "vqa", "train", "test"),
        "knowledge_vqa": _entry("flamingo_world", "knowledge_vqa", "vqa", "train", "test"),
        "video_qa": _video("flamingo_world", "video_qa", "video_qa", "train", "test"),
        "video_captions": _video("flamingo_world", "video_captions", "video_captions", "train", "test"),
    })


def world_extra_eval_sets() -> ml_collections.ConfigDict:
    """World tasks beyond the DEV analogues (not in the default config, so reproduce and ablate keep the five):
    creature_kind, ImageNet-style classification ranked over every creature kind's name, and action_kind,
    Kinetics-style video classification ranked over the 6 action phrases (class names from class_names())."""
    return ml_collections.ConfigDict({
        "creature_kind": _entry("flamingo_world", "creature_kind", "image_classification", "train", "test",
                                metric="accuracy"),
        "action_kind": _video("flamingo_world", "action_kind", "video_classification", "train", "test",
                              metric="accuracy"),
    })


def real_eval_sets() -> ml_collections.ConfigDict:
    """Entries for the real benchmarks' builders (prepared from the user's official files). query: the split
    scored locally; paper_split: where known to differ, the split the paper reports (VQAv2 test-dev, whose
    answers are not public: its server scores it; VATEX test, not in the builder yet)."""
    return ml_collections.ConfigDict({
        "coco": _entry("coco_karpathy", "", "captions", "train", "test", dev_queries=5000, paper_split="test"),
        "flickr30k": _entry("flickr30k", "", "captions", "train", "test"),
        "vqav2": _entry("vqav2", "", "vqa", "train", "validation", paper_split="test-dev"),
        "okvqa": _entry("okvqa", "", "vqa", "train", "validation"),
        "vizwiz": _entry("vizwiz", "", "vqa", "train", "validation"),
        "textvqa": _entry("textvqa", "", "vqa", "train", "validation"),
        "hateful_memes": _entry("hateful_memes", "", "classification", "train", "test_seen", paper_split="test_seen"),
        "msvd_qa": _video("msvd_qa", "", "video_qa", "train", "test"),
        "vatex": _video("vatex", "", "video_captions", "train", "validation", paper_split="test"),
        "visdial": _entry("visdial", "", "dialog", "train", "validation", metric="ndcg"),
        "youcook2": _video("youcook2", "", "video_captions", "train", "validation"),
        "msrvtt_qa": _video("msrvtt_qa", "", "video_qa", "train", "test"),
        "ivqa": _video("ivqa", "", "video_qa", "train", "test", metric="ivqa_accuracy"),
        "rareact": _video("rareact", "", "video_retrieval", "", "test", metric="mwap"),  # zero-shot: no support
        "nextqa": _video("nextqa", "", "video_qa", "train", "test", metric="wups"),
        "star": _video("star", "", "video_choice", "train", "validation", metric="accuracy"),
    })


def dev_protocol(sets: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The same entries under the DEV protocol: support and queries carved from each 'train' split."""
    out = ml_collections.ConfigDict(sets.to_dict())
    for name in out:
        if out[name].support:  # sets without a training split (RareAct) stay zero-shot on their own split
            out[name].support, out[name].query, out[name].paper_split = "dev_support", "dev_query", "dev (from train)"
    return out


class Subset:
    """Random access to source[indices[i]]."""

    def __init__(self, source: Sequence[dict[str, Any]], indices: np.ndarray):
        self._source, self._indices = source, indices

    def __len__(self) -> int:
        return len(self._indices)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self._source[int(self._indices[int(i)])]


def dev_split(train: Sequence[dict[str, Any]], part: str, queries: int = DEV_QUERIES,
              support: int = DEV_SUPPORT) -> Subset:
    """'dev_query' or 'dev_support' of a training split: one seeded permutation, queries first, then the
    support pool (disjoint). A split smaller than queries + support keeps at most half for queries."""
    n = len(train)
    q = min(queries, n // 2)
    s = min(support, n - q)
    perm = np.random.default_rng(DEV_SEED).permutation(n)
    return Subset(train, np.sort(perm[:q]) if part == "dev_query" else perm[q:q + s])


def entry(data_config: ml_collections.ConfigDict, name: str) -> ml_collections.ConfigDict:
    """The eval set's entry: configured, else (on the world) one of world_extra_eval_sets()."""
    sets = data_config.get("eval_sets") or world_eval_sets()
    if name in sets:
        return sets[name]
    extra = world_extra_eval_sets()
    if name in extra and data_config.get("source", "world") in ("world", "tfds") and "world" in data_config:
        return extra[name]
    raise ValueError(f"unknown eval set {name!r}; configured: {sorted(sets)}")


def eval_source(data_config: ml_collections.ConfigDict, name: str, split: str) -> Sequence[dict[str, Any]]:
    """Random-access records of an eval set; split is 'support', 'query', 'dev_support', 'dev_query' (carved
    from 'train') or a literal split name."""
    e = entry(data_config, name)
    split = {"support": e.support, "query": e.query}.get(split, split)
    if not split:
        raise ValueError(f"eval set {name!r} has no support pool: it is evaluated zero-shot only (--shots 0)")
    if split in ("dev_support", "dev_query"):
        return dev_split(mixture.open_source(data_config, e, "train"), split, int(e.get("dev_queries", DEV_QUERIES)))
    return mixture.open_source(data_config, e, split)


def class_names(data_config: ml_collections.ConfigDict, name: str) -> list[str]:
    """The class list a classification eval set is ranked over: the entry's classes, else the world's creature
    kinds (label k = entity k) or, for action_kind, its action phrases (label k = the k-th action)."""
    e = entry(data_config, name)
    if e.get("classes"):
        return list(e.classes)
    if e.builder == "flamingo_world":
        from flamingo_jax.data import config as config_lib
        from flamingo_jax.data.world import lexicon

        if e.builder_config == "action_kind":
            return list(lexicon.ACTIONS.values())
        w = config_lib.world_config(data_config)
        return [ent.name for ent in lexicon.make_entities(w.seed, w.n_entities)]
    raise ValueError(f"eval set {name!r} ranks over classes: give them as its entry's `classes`")


def record_media(data_config: ml_collections.ConfigDict, name: str, record: Mapping[str, Any]) -> np.ndarray:
    """float32[1, F, S, S, 3] in [0, 1]: the record's image (F = 1) or clip, preprocessed as in training
    without augmentation (centred frame sampling). Raises images.BadRecord for unusable media."""
    e = entry(data_config, name)
    size = data_config.image_size
    if e.kind in VIDEO_KINDS:
        return img_lib.clip_frames(record["frames"], record["fps"], e.frames, e.fps, size, None)[None]
    return img_lib.resize_pad(img_lib.decode_image(record["image"]), size)[None, None]
