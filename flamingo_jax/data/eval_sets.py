"""Evaluation sets for the few-shot harness: records by index, and their media as the model takes them.

    src = eval_source(config.data, 'vqa', 'query')      # random access: len(src), src[i] -> record dict
    media = record_media(config.data, 'vqa', src[i])   # float32[1, F, S, S, 3] in [0, 1], as in training

Each entry of config.data.eval_sets names a builder, its config, its kind (schema.py: captions, vqa,
video_qa, video_captions, classification) and which split is the few-shot SUPPORT pool and which the
QUERY split. The world's five DEV analogues are configured by default; real sets (coco_karpathy, vqav2,
okvqa, vizwiz, textvqa, hateful_memes, flickr30k, msvd_qa, vatex) read prepared TFDS builders from
config.data.data_dir / manual_dir (real_eval_sets() gives their entries).
Prompt construction and metrics belong to flamingo_jax.evaluation; this module only supplies data.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import ml_collections
import numpy as np

from flamingo_jax.data import images as img_lib
from flamingo_jax.data import mixture

VIDEO_KINDS = ('video_qa', 'video_captions')


def _entry(builder: str, builder_config: str, kind: str, support: str, query: str, frames: int = 1,
           fps: float = 1.0) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(builder=builder, builder_config=builder_config, kind=kind,
                                        support=support, query=query, frames=frames, fps=fps, manual_dir=''))


def world_eval_sets() -> ml_collections.ConfigDict:
  """The world's analogues of the paper's DEV benchmarks (COCO, VQAv2, OKVQA, MSVDQA, VATEX)."""
  return ml_collections.ConfigDict({
      'captions': _entry('flamingo_world', 'captions', 'captions', 'train', 'test'),
      'vqa': _entry('flamingo_world', 'vqa', 'vqa', 'train', 'test'),
      'knowledge_vqa': _entry('flamingo_world', 'knowledge_vqa', 'vqa', 'train', 'test'),
      'video_qa': _entry('flamingo_world', 'video_qa', 'video_qa', 'train', 'test', frames=8),
      'video_captions': _entry('flamingo_world', 'video_captions', 'video_captions', 'train', 'test', frames=8),
  })


def real_eval_sets() -> ml_collections.ConfigDict:
  """Entries for the real benchmarks' builders (prepared from the user's official files)."""
  return ml_collections.ConfigDict({
      'coco': _entry('coco_karpathy', '', 'captions', 'train', 'test'),
      'flickr30k': _entry('flickr30k', '', 'captions', 'train', 'test'),
      'vqav2': _entry('vqav2', '', 'vqa', 'train', 'validation'),
      'okvqa': _entry('okvqa', '', 'vqa', 'train', 'validation'),
      'vizwiz': _entry('vizwiz', '', 'vqa', 'train', 'validation'),
      'textvqa': _entry('textvqa', '', 'vqa', 'train', 'validation'),
      'hateful_memes': _entry('hateful_memes', '', 'classification', 'train', 'dev_seen'),
      'msvd_qa': _entry('msvd_qa', '', 'video_qa', 'train', 'test', frames=8),
      'vatex': _entry('vatex', '', 'video_captions', 'train', 'validation', frames=8),
  })


def _entry_of(data_config: ml_collections.ConfigDict, name: str) -> ml_collections.ConfigDict:
  sets = data_config.get('eval_sets') or world_eval_sets()
  if name not in sets:
    raise ValueError(f'unknown eval set {name!r}; configured: {sorted(sets)}')
  return sets[name]


def eval_source(data_config: ml_collections.ConfigDict, name: str, split: str) -> Sequence[dict[str, Any]]:
  """Random-access records of an eval set; split is 'support', 'query' or a literal split name."""
  e = _entry_of(data_config, name)
  split = {'support': e.support, 'query': e.query}.get(split, split)
  return mixture.open_source(data_config, e, split)


def record_media(data_config: ml_collections.ConfigDict, name: str, record: Mapping[str, Any]) -> np.ndarray:
  """float32[1, F, S, S, 3] in [0, 1]: the record's image (F = 1) or clip, preprocessed as in training
  without augmentation (centred frame sampling). Raises images.BadRecord for unusable media."""
  e = _entry_of(data_config, name)
  size = data_config.image_size
  if e.kind in VIDEO_KINDS:
    return img_lib.clip_frames(record['frames'], record['fps'], e.frames, e.fps, size, None)[None]
  return img_lib.resize_pad(img_lib.decode_image(record['image']), size)[None, None]
