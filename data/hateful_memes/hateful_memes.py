"""Hateful Memes (kind 'classification': image, overlaid text, label 1 = hateful) from the official files.

Manual directory:
  train.jsonl, dev_seen.jsonl, test_seen.jsonl   lines {"id", "img": "img/<id>.png", "label", "text"}
  img/<id>.png
Splits: train (support pool), dev_seen, test_seen (those present).
"""

from pathlib import Path

from flamingo_jax_datasets import common


class Builder(common.FileBuilder):
    """Hateful Memes images, texts and labels."""

    name = "hateful_memes"
    KIND = "classification"

    def _available_splits(self, root: Path):
        splits = [
            s for s in ("train", "dev_seen", "test_seen", "dev_unseen", "test_unseen")
            if (root / f"{s}.jsonl").exists()
        ]
        if not splits:
            raise FileNotFoundError(f"no train.jsonl / dev_seen.jsonl in {root}; see the hateful_memes docstring")
        return splits

    def _examples(self, root: Path, split: str):
        for rec in common.read_jsonl(root / f"{split}.jsonl"):
            key = str(rec["id"])
            yield key, {
                "id": key, "image": common.read_bytes(root / rec["img"]), "text": rec.get("text", ""),
                "label": int(rec.get("label", -1))
            }
