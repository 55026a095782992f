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

The entries themselves (world_eval_sets, real_eval_sets, dev_protocol, the paper's video protocol
VIDEO_FRAMES / VIDEO_FPS) are pure configuration in eval_entries.py; this module opens their records. Under the
DEV protocol (paper Appendix B.1) the split names 'dev_support' and 'dev_query' carve disjoint, seeded subsets
from an entry's 'train' split (dev_split).
Prompt construction and metrics belong to flamingo_jax.evaluation; this module only supplies data.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import ml_collections
import numpy as np

from flamingo_jax.data import config as config_lib
from flamingo_jax.data import images as img_lib
from flamingo_jax.data import mixture
from flamingo_jax.data.eval_entries import DEV_QUERIES, DEV_SUPPORT, VIDEO_FPS, VIDEO_FRAMES, VIDEO_KINDS
from flamingo_jax.data.eval_entries import dev_protocol, real_eval_sets, world_eval_sets, world_extra_eval_sets
from flamingo_jax.data.world import lexicon

# Kept importable from here (callers read them as eval_sets.X): the entry tables live in eval_entries.
__all__ = [
    "DEV_QUERIES", "DEV_SUPPORT", "VIDEO_FPS", "VIDEO_FRAMES", "VIDEO_KINDS", "dev_protocol", "real_eval_sets",
    "world_eval_sets", "world_extra_eval_sets"
]

DEV_SEED = 0


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
