"""MMC4 (Zhu et al. 2023) interleaved documents in the layout its download scripts produce (kind 'interleaved').

Manual directory:
  docs/*.jsonl[.zip]  the released shards (docs_shard_{n}_v2.jsonl.zip, zipped or not), one document per line with
                    "text_list": [sentences], "image_info": [{"image_name", "matched_text_index",
                    "matched_sim", ...}], "url"
  images/<image_name>   the images fetched for the shards (missing ones are stored empty and dropped)
Each image is placed just before its matched sentence (as OpenFlamingo does); images whose matched_sim is
below the config's min_sim are left out (OpenFlamingo trains with 0.24; the default keeps all).
Split: 'train' (all shards).
"""

import dataclasses
from pathlib import Path

import tensorflow_datasets as tfds

from flamingo_jax_datasets import common


@dataclasses.dataclass(eq=False)
class Mmc4Config(tfds.core.BuilderConfig):
  min_sim: float = 0.0


class Builder(common.FileBuilder):
  """MMC4 shards + images."""

  name = 'mmc4'
  KIND = 'interleaved'
  BUILDER_CONFIGS = [Mmc4Config(name='all', min_sim=0.0), Mmc4Config(name='sim024', min_sim=0.24)]

  def _examples(self, root: Path, split: str):
    shards = sorted([*(root / 'docs').glob('*.jsonl'), *(root / 'docs').glob('*.jsonl.zip')])
    if not shards:
      raise FileNotFoundError(f'no MMC4 shards in {root / "docs"} (docs/*.jsonl); see the mmc4 docstring')
    for shard in shards:
      for n, doc in enumerate(common.read_jsonl(shard)):
        infos = [i for i in doc.get('image_info', []) if i.get('matched_sim', 1.0) >= self.builder_config.min_sim]
        infos.sort(key=lambda i: i['matched_text_index'])
        key = f'{shard.name.split(".")[0]}-{n}'
        yield key, {'id': key, 'texts': list(doc['text_list']),
                    'images': [common.read_bytes(root / 'images' / i['image_name']) for i in infos],
                    'image_positions': [int(i['matched_text_index']) for i in infos]}
