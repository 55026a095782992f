"""VizWiz VQA (kind 'vqa') from the official files.

Manual directory:
  Annotations/{train,val}.json   lists of {"image", "question", "answers": [{"answer", ...}], "answer_type"}
  {train,val}/<image>            the images
Splits: train (support pool), validation.
"""

from pathlib import Path

from flamingo_jax_datasets import common

_SPLITS = {"train": "train", "validation": "val"}


class Builder(common.FileBuilder):
    """VizWiz questions, answers and images."""

    name = "vizwiz"
    KIND = "vqa"
    SPLITS = tuple(_SPLITS)

    def _examples(self, root: Path, split: str):
        s = _SPLITS[split]
        for rec in common.read_json(common.require(root / "Annotations" / f"{s}.json", f"Annotations/{s}.json")):
            yield rec["image"], {
                "id": rec["image"], "image": common.read_bytes(root / s / rec["image"]), "question": rec["question"],
                "answers": [a["answer"] for a in rec.get("answers", [])], "question_type": rec.get("answer_type", "")
            }
