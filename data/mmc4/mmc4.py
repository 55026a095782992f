"""MMC4 (Zhu et al. 2023) interleaved documents (kind 'interleaved'), in either layout its users hold.

Manual directory, one or both of:
  *.tar (any sub-folder)  WebDataset shards as OpenFlamingo's convert_mmc4_to_wds writes them: one sample per
                    document, <key>.json holding the document with each image embedded in its image_info
                    entry as "image_base64"; an image may instead be a member of the same sample named
                    <key>.<image_name> (or <key>.<k>.<ext> for the k-th image_info entry).
  docs/*.jsonl[.zip]  the released shards (docs_shard_{n}_v2.jsonl.zip, zipped or not) with
  images/<image_name>   the images fetched for them.
A document is {"text_list": [sentences], "image_info": [{"image_name", "matched_text_index", "matched_sim",
...}], "url"}. Each image is placed just before its matched sentence (as OpenFlamingo does); images whose
matched_sim is below the config's min_sim are left out (OpenFlamingo trains with 0.24; 'all' keeps all).
Bad json, missing / zero-byte / undecodable images and truncated shards are skipped or repaired and
counted by reason when the dataset is prepared (common.FileBuilder; python -m flamingo_jax.data.prepare).
Split: 'train' (all shards).
"""

import dataclasses
import json
from pathlib import Path

import tensorflow_datasets as tfds

from flamingo_jax_datasets import common


@dataclasses.dataclass(eq=False)
class Mmc4Config(tfds.core.BuilderConfig):
    min_sim: float = 0.0


class Builder(common.FileBuilder):
    """MMC4 WebDataset shards, or jsonl shards + images."""

    name = "mmc4"
    KIND = "interleaved"
    BUILDER_CONFIGS = [Mmc4Config(name="all", min_sim=0.0), Mmc4Config(name="sim024", min_sim=0.24)]

    def _examples(self, root: Path, split: str):
        tars = sorted(root.rglob("*.tar"))
        shards = sorted([*(root / "docs").glob("*.jsonl"), *(root / "docs").glob("*.jsonl.zip")])
        if not tars and not shards:
            raise FileNotFoundError(f"no MMC4 shards in {root}: WebDataset *.tar or docs/*.jsonl[.zip]; see the mmc4 "
                                    "docstring")
        total = len(tars) + len(shards)
        for n, tar in enumerate(tars):
            for key, fields in common.tar_samples(tar):
                name = f"{tar.stem}/{key}"
                yield name, fields if isinstance(fields, common.Skip) else self._from_sample(name, fields)
            self.progress.units(n + 1, total)
        for n, shard in enumerate(shards):
            for i, line in enumerate(common.read_jsonl_lines(shard)):
                key = f'{shard.name.split(".")[0]}-{i}'
                try:
                    doc = json.loads(line)
                except ValueError as e:
                    yield key, common.Skip("bad_json", str(e))
                    continue
                yield key, self._document(key, doc,
                                          lambda info, k: common.read_bytes(root / "images" / info["image_name"]))
            self.progress.units(len(tars) + n + 1, total)

    def _from_sample(self, key: str, fields: dict):
        if "json" not in fields:
            return common.Skip("bad_json", "no .json member")
        try:
            doc = json.loads(fields["json"])
        except ValueError as e:
            return common.Skip("bad_json", str(e))

        def image(info, k):
            if info.get("image_base64"):
                return common.decode_base64(info["image_base64"])
            name = str(info.get("image_name", "")).lower()
            for field in (name, *(f"{k}.{ext[1:]}" for ext in common.IMAGE_EXTENSIONS)):
                if field and field in fields:
                    return fields[field]
            return common.MISSING

        return self._document(key, doc, image)

    def _document(self, key: str, doc, image_fn):
        """The record of one MMC4 document; image_fn(image_info entry, its index) -> bytes."""
        if not isinstance(doc, dict) or not isinstance(doc.get("text_list"), list):
            return common.Skip("bad_json", 'no "text_list"')
        infos = [(k, i) for k, i in enumerate(doc.get("image_info") or [])
                 if isinstance(i, dict) and i.get("matched_sim", 1.0) >= self.builder_config.min_sim]
        infos.sort(key=lambda ki: ki[1].get("matched_text_index", 0))
        return {
            "id": key, "texts": [str(t) for t in doc["text_list"]], "images": [image_fn(i, k) for k, i in infos],
            "image_positions": [int(i.get("matched_text_index", 0)) for _, i in infos]
        }
