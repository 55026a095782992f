"""Interleaved documents in a simple generic layout (kind 'interleaved').

Manual directory:
  <split>.jsonl     one document per line: {"id": "...", "chunks": [{"text": "..."}, {"image": "rel/path.jpg"},
                    {"text": "..."}, ...]} -- chunks in reading order; image paths relative to the manual dir
  (any image files the chunks name)
Splits: every <split>.jsonl present (train.jsonl, validation.jsonl, ...).
"""

import json
from pathlib import Path

from flamingo_jax_datasets import common


class Builder(common.JsonlSplitsBuilder):
    """Interleaved text+image documents from <split>.jsonl files of chunks."""

    name = "interleaved_generic"
    KIND = "interleaved"

    def _examples(self, root: Path, split: str):
        for n, line in enumerate(common.read_jsonl_lines(root / f"{split}.jsonl")):
            try:
                doc = json.loads(line)
            except ValueError as e:
                yield f"{split}-{n}", common.Skip("bad_json", str(e))
                continue
            texts, images, positions = [], [], []
            for chunk in doc.get("chunks", []):
                if "image" in chunk:
                    images.append(common.read_bytes(root / chunk["image"]))
                    positions.append(len(texts))
                elif chunk.get("text", "").strip():
                    texts.append(chunk["text"])
            key = str(doc.get("id", f"{split}-{n}"))
            yield key, {"id": key, "texts": texts, "images": images, "image_positions": positions}
