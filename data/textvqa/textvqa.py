"""TextVQA (kind 'vqa') from the official files.

Manual directory:
  TextVQA_0.5.1_{train,val}.json   {"data": [{"question_id", "question", "image_id", "answers": [...]}]}
  train_images/<image_id>.jpg      the images (val images are in train_images/ too, as released)
Splits: train (support pool), validation.
"""

from pathlib import Path

from flamingo_jax_datasets import common

_SPLITS = {"train": "train", "validation": "val"}


class Builder(common.FileBuilder):
    """TextVQA questions, answers and images."""

    name = "textvqa"
    KIND = "vqa"
    SPLITS = tuple(_SPLITS)

    def _examples(self, root: Path, split: str):
        f = f"TextVQA_0.5.1_{_SPLITS[split]}.json"
        for rec in common.read_json(common.require(root / f, f))["data"]:
            key = str(rec["question_id"])
            yield key, {
                "id": key, "image": common.read_bytes(root / "train_images" / f'{rec["image_id"]}.jpg'),
                "question": rec["question"], "answers": list(rec.get("answers", [])), "question_type": ""
            }
