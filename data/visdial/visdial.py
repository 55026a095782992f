"""VisDial v1.0 (kind 'dialog': one dialog round, its 100 answer options and their relevance).

Manual directory:
  visdial_1.0_train.json, visdial_1.0_val.json   {"data": {"questions": [str], "answers": [str], "dialogs":
      [{"image_id", "caption", "dialog": [{"question": q index, "answer": a index, "answer_options": [100 a
      indices], "gt_index"}]}]}}
  visdial_1.0_val_dense_annotations.json (optional)   [{"image_id", "round_id" (1-based), "gt_relevance": [100]}]
  images/**/<name ending in the 12-digit image id>.jpg   (COCO train2014 / val2014, VisualDialog_val2018)
Splits: train (support pool: one round per dialog, round image_id mod #rounds, its history before it),
validation (the densely annotated round of each dialog, scored by NDCG; without the dense file, every dialog's
last round with no relevance).
"""

from pathlib import Path

from flamingo_jax_datasets import common

_FILES = {"train": "visdial_1.0_train.json", "validation": "visdial_1.0_val.json"}


def _image_index(root: Path) -> dict[int, Path]:
    """image id -> file, from the 12-digit id that ends every VisDial / COCO image name."""
    out = {}
    for p in (root / "images").rglob("*"):
        stem = p.stem
        if p.suffix.lower() in common.IMAGE_EXTENSIONS and len(stem) >= 12 and stem[-12:].isdigit():
            out[int(stem[-12:])] = p
    return out


class Builder(common.FileBuilder):
    """VisDial dialogs: an image, its caption, the previous rounds, a question and 100 candidate answers."""

    name = "visdial"
    KIND = "dialog"
    SPLITS = tuple(_FILES)

    def _examples(self, root: Path, split: str):
        data = common.read_json(common.require(root / _FILES[split], _FILES[split]))["data"]
        questions, answers = data["questions"], data["answers"]
        dense: dict[int, dict] = {}
        if split == "validation" and (root / "visdial_1.0_val_dense_annotations.json").exists():
            dense = {int(d["image_id"]): d for d in common.read_json(root / "visdial_1.0_val_dense_annotations.json")}
        images = _image_index(root)
        for d in data["dialogs"]:
            image_id, rounds = int(d["image_id"]), d["dialog"]
            relevance: list[float] = []
            if image_id in dense:
                r = int(dense[image_id]["round_id"]) - 1
                relevance = [float(x) for x in dense[image_id]["gt_relevance"]]
            elif split == "validation":
                r = len(rounds) - 1
            else:
                r = image_id % len(rounds)
            cur = rounds[r]
            key = f"{image_id}_{r + 1}"
            yield key, {
                "id": key, "image": common.read_bytes(images.get(image_id, root / "images" / f"{image_id}.jpg")),
                "caption": d["caption"], "history_questions": [questions[x["question"]] for x in rounds[:r]],
                "history_answers": [answers[x["answer"]] for x in rounds[:r]], "question": questions[cur["question"]],
                "options": [answers[a] for a in cur["answer_options"]], "relevance": relevance,
                "answer_index": int(cur.get("gt_index", -1))
            }
