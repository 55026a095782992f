"""What defines a generated world: its subsets (and their record kinds), their sizes, and WorldConfig.

Subsets (kind in parentheses; record schemas in flamingo_jax/data/schema.py):
  training:   interleaved (interleaved, M3W-like), alt_text (pair, ALIGN-like), long_text (pair, LTIP-like),
              video_text (video_text, VTP-like), text (text, LM pretraining corpus with the world's FACTS),
              clip_pairs (pair, contrastive vision pretraining)
  evaluation: captions (captions, COCO-like), vqa (vqa, VQAv2-like), knowledge_vqa (vqa, OKVQA-like:
              answers are facts from the text corpus), video_qa (video_qa, MSVDQA-like),
              video_captions (video_captions, VATEX-like), creature_kind (image_classification,
              ImageNet-like: one creature, which of the n_entities kinds), action_kind (video_classification,
              Kinetics-like: which of the 6 actions a clip shows); 'train' split = few-shot support pool.
Evaluation videos (video_qa, video_captions) last EVAL_VIDEO_SECONDS at EVAL_VIDEO_FPS, long enough for the
paper's inference protocol of 30 frames at 3 FPS; training clips keep video_frames at video_fps.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

SUBSET_KINDS: dict[str, str] = {
    "interleaved": "interleaved",
    "alt_text": "pair",
    "long_text": "pair",
    "video_text": "video_text",
    "text": "text",
    "clip_pairs": "pair",
    "captions": "captions",
    "vqa": "vqa",
    "knowledge_vqa": "vqa",
    "video_qa": "video_qa",
    "video_captions": "video_captions",
    "creature_kind": "image_classification",
    "action_kind": "video_classification",
}
TRAIN_SUBSETS = ("interleaved", "alt_text", "long_text", "video_text", "text", "clip_pairs")
EVAL_SUBSETS = ("captions", "vqa", "knowledge_vqa", "video_qa", "video_captions", "creature_kind", "action_kind")

# Records per split at scale 1.0.
DEFAULT_SIZES: dict[str, dict[str, int]] = {
    "interleaved": {"train": 2000},
    "alt_text": {"train": 4000},
    "long_text": {"train": 2000},
    "video_text": {"train": 1000},
    "text": {"train": 4000},
    "clip_pairs": {"train": 4000},
    "captions": {"train": 400, "test": 200},
    "vqa": {"train": 400, "test": 200},
    "knowledge_vqa": {"train": 400, "test": 200},
    "video_qa": {"train": 200, "test": 100},
    "video_captions": {"train": 200, "test": 100},
    "creature_kind": {"train": 400, "test": 200},
    "action_kind": {"train": 200, "test": 100},
}
# The paper evaluates video on 30 frames at 3 FPS (its temporal embeddings, learnt on 8 frames, linearly
# interpolated): evaluation clips are rendered that long. Only their pixels change with this (drawn from the
# media stream); their text and every training record are the same draws as before.
EVAL_VIDEO_FPS = 3.0
EVAL_VIDEO_SECONDS = 10.0


@dataclasses.dataclass(frozen=True)
class WorldConfig:
    """Everything that defines a world; two equal configs give byte-identical records."""
    seed: int = 0
    image_size: int = 64  # square images, pixels
    video_frames: int = 16  # frames stored per clip
    video_fps: float = 2.0  # so a clip lasts video_frames / video_fps seconds
    n_entities: int = 12  # creature kinds (<= number of shapes)
    scale: float = 1.0  # multiplies DEFAULT_SIZES (at least 2 records per split)
    max_page_images: int = 7  # interleaved pages have 1..max_page_images images
    quiz_pages: float = 0.25  # fraction of interleaved pages that are quizzes or captioned galleries
    fact_pages: float = 0.0  # fraction of interleaved pages that state creatures' facts, then ask about them
    max_quiz_images: int = 0  # quiz / gallery / fact pages have up to this many images (0 = max_page_images)
    text_sections: int = 1  # text-corpus documents have 1..text_sections sections (facts, fact quizzes)
    clip_names: float = 0.0  # fraction of clip_pairs texts that only name the creatures ('a vog and a rer.')
    clip_pairs: int = 0  # clip_pairs records (0: DEFAULT_SIZES x scale); the vision tower's pretraining
    # sees each pair once per len / batch steps, and a small set is memorised
    page_styles: bool = False  # quiz pages answer, and galleries caption, in a style drawn per page
    episode_styles: bool = False  # an eval query answers in a style drawn per query; its shots show that style

    def num_records(self, subset: str, split: str) -> int:
        sizes = DEFAULT_SIZES[subset]
        if split not in sizes:
            raise ValueError(f"world subset {subset!r} has splits {sorted(sizes)}, not {split!r}")
        if subset == "clip_pairs" and self.clip_pairs > 0:
            return self.clip_pairs
        return max(2, int(round(sizes[split] * self.scale)))

    def splits(self, subset: str) -> tuple[str, ...]:
        return tuple(DEFAULT_SIZES[subset])


def world_config_from(d: Mapping[str, Any] | None) -> WorldConfig:
    """WorldConfig from a mapping (e.g. config.data.world), ignoring nothing: unknown keys are an error."""
    d = dict(d or {})
    fields = {f.name for f in dataclasses.fields(WorldConfig)}
    unknown = set(d) - fields
    if unknown:
        raise ValueError(f"unknown world config keys {sorted(unknown)}; valid: {sorted(fields)}")
    return WorldConfig(**d)
