"""OK-VQA (kind 'vqa') from the official files (same format as VQAv2).

Manual directory:
    OpenEnded_mscoco_{train,val}2014_questions.json
    mscoco_{train,val}2014_annotations.json
    {train,val}2014/COCO_{train,val}2014_<image_id:012d>.jpg
Splits: train (support pool), validation.
"""

from pathlib import Path

from flamingo_jax_datasets import common

_SPLITS = {"train": "train", "validation": "val"}


class Builder(common.FileBuilder):
    """OK-VQA questions, answers and COCO images."""

    name = "okvqa"
    KIND = "vqa"
    SPLITS = tuple(_SPLITS)

    def _examples(self, root: Path, split: str):
        s = _SPLITS[split]
        return common.vqa_questions(root, f"OpenEnded_mscoco_{s}2014_questions.json",
                                    f"mscoco_{s}2014_annotations.json",
                                    lambda image_id: root / f"{s}2014" / f"COCO_{s}2014_{int(image_id):012d}.jpg")
