"""VQAv2 (kind 'vqa') from the official files.

Manual directory:
    v2_OpenEnded_mscoco_{train,val}2014_questions.json
    v2_mscoco_{train,val}2014_annotations.json
    {train,val}2014/COCO_{train,val}2014_<image_id:012d>.jpg
Splits: train (the few-shot support pool), validation (the paper reports on val).
answers: the 10 human answers; question_type: the annotation's answer_type (yes/no, number, other).
"""

from pathlib import Path

from flamingo_jax_datasets import common

_SPLITS = {"train": "train", "validation": "val"}


class Builder(common.FileBuilder):
    """VQAv2 questions, answers and COCO images."""

    name = "vqav2"
    KIND = "vqa"
    SPLITS = tuple(_SPLITS)

    def _examples(self, root: Path, split: str):
        s = _SPLITS[split]
        return common.vqa_questions(root, f"v2_OpenEnded_mscoco_{s}2014_questions.json",
                                    f"v2_mscoco_{s}2014_annotations.json",
                                    lambda image_id: root / f"{s}2014" / f"COCO_{s}2014_{int(image_id):012d}.jpg")
