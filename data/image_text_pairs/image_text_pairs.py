"""Image-text pairs (ALIGN / LTIP / LAION-style) from local folders or tars (kind 'pair').

Manual directory, one folder per split (train/, validation/, ...), each holding either
  - image files with a caption file of the same stem next to them (img2dataset's 'files' layout:
    00000/000000012.jpg + 00000/000000012.txt), in any sub-folders; or
  - WebDataset tar shards (*.tar, LAION-style as img2dataset writes them) whose members <key>.jpg|png|...
    and <key>.txt (or <key>.json with "caption") form pairs.
An image without a caption, a caption without an image, an image that does not decode and a truncated
shard are skipped and counted by reason when the dataset is prepared (common.FileBuilder).
"""

from pathlib import Path

from flamingo_jax_datasets import common


class Builder(common.FileBuilder):
    """Image + caption pairs from folders or WebDataset tars."""

    name = "image_text_pairs"
    KIND = "pair"

    def _available_splits(self, root: Path):
        splits = sorted(p.name for p in root.iterdir() if p.is_dir())
        if not splits:
            raise FileNotFoundError(f"no split folders (train/, ...) in {root}; see the image_text_pairs docstring")
        return splits

    def _examples(self, root: Path, split: str):
        folder = root / split
        tars = sorted(folder.rglob("*.tar"))
        for n, tar in enumerate(tars):
            yield from common.tar_pairs(tar)
            self.progress.units(n + 1, len(tars))
        stems = {}
        for p in sorted(folder.rglob("*")):
            if p.suffix.lower() in common.IMAGE_EXTENSIONS or p.suffix.lower() == ".txt":
                stems.setdefault(p.with_suffix(""), []).append(p)
        for stem, files in sorted(stems.items()):
            image = next((f for f in files if f.suffix.lower() in common.IMAGE_EXTENSIONS), None)
            text = stem.with_suffix(".txt")
            key = str(stem.relative_to(folder))
            yield key, {
                "id": key, "image": common.read_bytes(image) if image else common.MISSING,
                "text": text.read_text(errors="replace").strip() if text.exists() else ""
            }
