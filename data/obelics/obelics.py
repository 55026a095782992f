"""OBELICS (Laurençon et al. 2023)-style interleaved web documents from parquet (kind 'interleaved').

Manual directory:
  *.parquet (any sub-folder)  one document per row with list columns "texts" and "images" of equal length:
                    at each position exactly one is set (a paragraph, or an image URL), in reading order
                    (the OBELICS release's schema; other columns are ignored). A "id" or "url" column, if
                    present, names the document.
  images/           the images fetched for the URLs, resolved through
                    image_map.jsonl ({"url": ..., "path": <relative to the manual dir>} per line) when it is
                    there, else through the <name>.json sidecars img2dataset writes beside each image
                    (images/00000/000000012.jpg + 000000012.json holding {"url": ...}).
A URL with no local file is a missing image: the image is removed from its page (a page left without
images is skipped), counted when the dataset is prepared. Parquet needs pyarrow.
Split: 'train' (all parquet files).
"""

import json
from pathlib import Path

from flamingo_jax_datasets import common


def image_paths(root: Path) -> dict[str, Path]:
    """URL -> local image file (image_map.jsonl, else img2dataset's json sidecars under images/)."""
    mapping = root / "image_map.jsonl"
    if mapping.exists():
        out = {}
        for line in common.read_jsonl_lines(mapping):
            try:
                row = json.loads(line)
                out[row["url"]] = root / row["path"]
            except (ValueError, KeyError, TypeError):
                continue  # a bad mapping line leaves its URL unresolved: counted as missing_image
        return out
    out = {}
    for sidecar in (root / "images").rglob("*.json"):
        image = next((sidecar.with_suffix(ext) for ext in common.IMAGE_EXTENSIONS if sidecar.with_suffix(ext).exists()),
                     None)
        try:
            url = json.loads(sidecar.read_text()).get("url")
        except (ValueError, AttributeError):
            continue
        if url and image:
            out[url] = image
    return out


class Builder(common.FileBuilder):
    """OBELICS-style parquet documents + local images."""

    name = "obelics"
    KIND = "interleaved"

    def _examples(self, root: Path, split: str):
        import pyarrow.parquet as pq

        files = sorted(root.rglob("*.parquet"))
        if not files:
            raise FileNotFoundError(f"no *.parquet in {root}; see the obelics docstring")
        local = image_paths(root)
        for n, path in enumerate(files):
            table = pq.read_table(path)
            columns = set(table.column_names)
            if not {"texts", "images"} <= columns:
                raise ValueError(
                    f'{path} has columns {sorted(columns)}; an OBELICS-style file needs "texts" and "images"')
            name_col = "id" if "id" in columns else "url" if "url" in columns else None
            for i, row in enumerate(table.to_pylist()):
                key = f"{path.stem}-{i}"
                if name_col and row.get(name_col):
                    key = f"{path.stem}-{row[name_col]}"
                texts_col, images_col = row["texts"] or [], row["images"] or []
                if len(texts_col) != len(images_col):
                    yield key, common.Skip("bad_row", f"{len(texts_col)} texts but {len(images_col)} images")
                    continue
                texts, images, positions = [], [], []
                for text, url in zip(texts_col, images_col):
                    if url:
                        images.append(common.read_bytes(local[url]) if url in local else common.MISSING)
                        positions.append(len(texts))
                    elif text and text.strip():
                        texts.append(text)
                yield key, {"id": key, "texts": texts, "images": images, "image_positions": positions}
            self.progress.units(n + 1, len(files))
