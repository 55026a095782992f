"""Record schemas shared by every dataset builder and by the input pipeline.

Every source (a TFDS builder's array_record data source, or the generated world read directly) yields
records of one of these kinds. Images are stored ENCODED (PNG/JPEG bytes) and decoded in the input
pipeline, so a corrupt file drops only its own record and is counted, instead of failing a build or a
whole tf.data pipeline.

  interleaved:     id, texts: list[str] (N segments), images: list[bytes] (K), image_positions: list[int]
                   (K; image k sits just before texts[image_positions[k]]; N means after the last segment)
  pair:            id, image: bytes, text: str
  video_text:      id, frames: list[bytes] (F), fps: float, text: str
  text:            id, text: str
  captions:        id, image: bytes, captions: list[str]
  vqa:             id, image: bytes, question: str, answers: list[str], question_type: str
  video_qa:        id, frames: list[bytes], fps: float, question: str, answers: list[str], question_type: str
  video_captions:  id, frames: list[bytes], fps: float, captions: list[str]
  classification:  id, image: bytes, text: str, label: int   (HatefulMemes)
"""

from __future__ import annotations

from typing import Any

import numpy as np

KINDS = ('interleaved', 'pair', 'video_text', 'text', 'captions', 'vqa', 'video_qa', 'video_captions',
         'classification')

_STR = ('id', 'text', 'question', 'question_type')
_STR_LIST = ('texts', 'captions', 'answers')
_BYTES_LIST = ('images', 'frames')


def tfds_features(kind: str):
  """The tfds.features.FeaturesDict of a record kind (images as raw encoded bytes)."""
  import tensorflow_datasets as tfds  # heavy import, only builders need it

  encoded = lambda: tfds.features.Tensor(shape=(), dtype=np.object_)  # noqa: E731
  text = tfds.features.Text
  spec: dict[str, Any] = {'id': text()}
  if kind == 'interleaved':
    spec.update(texts=tfds.features.Sequence(text()), images=tfds.features.Sequence(encoded()),
                image_positions=tfds.features.Sequence(np.int32))
  elif kind == 'pair':
    spec.update(image=encoded(), text=text())
  elif kind == 'video_text':
    spec.update(frames=tfds.features.Sequence(encoded()), fps=np.float32, text=text())
  elif kind == 'text':
    spec.update(text=text())
  elif kind == 'captions':
    spec.update(image=encoded(), captions=tfds.features.Sequence(text()))
  elif kind == 'vqa':
    spec.update(image=encoded(), question=text(), answers=tfds.features.Sequence(text()), question_type=text())
  elif kind == 'video_qa':
    spec.update(frames=tfds.features.Sequence(encoded()), fps=np.float32, question=text(),
                answers=tfds.features.Sequence(text()), question_type=text())
  elif kind == 'video_captions':
    spec.update(frames=tfds.features.Sequence(encoded()), fps=np.float32, captions=tfds.features.Sequence(text()))
  elif kind == 'classification':
    spec.update(image=encoded(), text=text(), label=np.int32)
  else:
    raise ValueError(f'unknown record kind {kind!r}; choose from {KINDS}')
  return tfds.features.FeaturesDict(spec)


def _str(x) -> str:
  return x.decode('utf-8', errors='replace') if isinstance(x, (bytes, np.bytes_)) else str(x)


def normalize(rec: dict[str, Any]) -> dict[str, Any]:
  """Converts a record read from TFDS (bytes strings, numpy arrays) to plain Python values."""
  out = dict(rec)
  for k in _STR:
    if k in out:
      out[k] = _str(out[k])
  for k in _STR_LIST:
    if k in out:
      out[k] = [_str(t) for t in out[k]]
  for k in _BYTES_LIST:
    if k in out:
      out[k] = [bytes(b) for b in out[k]]
  if 'image' in out:
    out['image'] = bytes(out['image'])
  if 'image_positions' in out:
    out['image_positions'] = [int(p) for p in out['image_positions']]
  if 'fps' in out:
    out['fps'] = float(out['fps'])
  if 'label' in out:
    out['label'] = int(out['label'])
  return out
