"""The eval-set entries of config.data.eval_sets: which builder, splits, frames and metric each task reads.

Pure configuration (no data is opened here), so flamingo_jax.data.config can build its defaults from these
tables and flamingo_jax.data.eval_sets, which opens the records, imports them without a cycle.

Video follows the paper's inference protocol (Section 3.1 / Appendix A.1: 30 frames at 3 FPS, the temporal
embeddings learnt on 8 frames linearly interpolated): VIDEO_FRAMES / VIDEO_FPS.

DEV protocol (paper Appendix B.1, the DEV benchmarks): the paper tuned on validation subsets carved from
the TRAINING sets, 2048 support examples and 5000 queries for COCO, 1024 for the others; dev_protocol(sets)
switches every entry to the splits 'dev_support' and 'dev_query' (carved by eval_sets.dev_split).
"""

from __future__ import annotations

from typing import Sequence

import ml_collections

VIDEO_KINDS = ("video_qa", "video_captions", "video_choice", "video_retrieval", "video_classification")
VIDEO_FRAMES, VIDEO_FPS = 30, 3.0  # the paper's video evaluation: 30 frames at 3 FPS
DEV_SUPPORT = 2048  # the DEV protocol's support pool, carved from the training split
DEV_QUERIES = 1024  # and its queries (COCO: 5000)


def _entry(builder: str, builder_config: str, kind: str, support: str, query: str, frames: int = 1, fps: float = 1.0, *,
           metric: str = "", classes: Sequence[str] = (), paper_split: str = "",
           dev_queries: int = DEV_QUERIES) -> ml_collections.ConfigDict:
    """max_new_tokens: how many tokens an open-ended task generates (0: its kind's, evaluation.harness.OPEN_ENDED)."""
    return ml_collections.ConfigDict(
        dict(builder=builder, builder_config=builder_config, kind=kind, support=support, query=query, frames=frames,
             fps=fps, manual_dir="", metric=metric, classes=list(classes), paper_split=paper_split,
             dev_queries=dev_queries, max_new_tokens=0))


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
