"""Shared pieces of the real-file builders: the base class, file reading, and per-format-family parsers.

Every real-file builder reads the user's local copy of a dataset from the TFDS manual directory
(`--manual_dir`, default <data_dir>/downloads/manual/) in the dataset's official layout; nothing is
downloaded. Images are stored as their encoded bytes; a file that is listed but absent is stored as b''
(and logged), so the input pipeline drops the record and counts it as `missing_image` instead of the
build failing halfway through a large dataset.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import tarfile
import zipfile
from pathlib import Path
from typing import Any, Iterable, Iterator

import tensorflow_datasets as tfds

from flamingo_jax.data import schema

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.webp', '.bmp', '.gif')
log = logging.getLogger(__name__)


def read_bytes(path: os.PathLike | str) -> bytes:
  """The file's bytes, or b'' when it is missing (counted downstream as missing_image)."""
  try:
    return Path(path).read_bytes()
  except (FileNotFoundError, IsADirectoryError):
    log.warning('missing file %s: stored as an empty image (the pipeline drops it)', path)
    return b''


def read_json(path: os.PathLike | str) -> Any:
  with open(path) as f:
    return json.load(f)


def read_jsonl(path: os.PathLike | str) -> Iterator[dict]:
  """Lines of a .jsonl file, or of the single .jsonl inside a .zip (MMC4 releases zipped shards)."""
  path = Path(path)
  if path.suffix == '.zip':
    with zipfile.ZipFile(path) as z:
      names = [n for n in z.namelist() if n.endswith('.jsonl')]
      if len(names) != 1:
        raise ValueError(f'{path} should hold exactly one .jsonl file, found {names}')
      lines = z.read(names[0]).decode('utf-8').splitlines()
  else:
    lines = path.read_text().splitlines()
  for line in lines:
    if line.strip():
      yield json.loads(line)


def frame_files(folder: os.PathLike | str) -> list[Path]:
  """The image files of a frame folder in name order (frame_0001.jpg, ...)."""
  folder = Path(folder)
  if not folder.is_dir():
    return []
  return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)


def require(path: Path, what: str) -> Path:
  """A clear error naming the fix when an expected manual file is absent."""
  if not path.exists():
    raise FileNotFoundError(f'{what} not found at {path}: put the official files in the manual directory '
                            '(tfds --manual_dir, or config.data.manual_dir) as described in the builder docstring')
  return path


class FileBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Base for builders of local files. Subclasses set name, KIND, SPLITS and implement _examples."""

  KIND = 'pair'
  SPLITS: tuple[str, ...] = ('train',)
  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.'}
  MANUAL_DOWNLOAD_INSTRUCTIONS = 'Place the official files in the manual directory.'

  def __init_subclass__(cls, **kwargs):
    super().__init_subclass__(**kwargs)
    # Each builder's module docstring describes its manual-directory layout: TFDS shows it when it is missing.
    doc = sys.modules[cls.__module__].__doc__
    if doc:
      cls.MANUAL_DOWNLOAD_INSTRUCTIONS = doc

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(builder=self, description=(type(self).__doc__ or '').strip(),
                                 features=schema.tfds_features(self.KIND))

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    root = Path(dl_manager.manual_dir)
    return {split: self._generate_examples(root, split) for split in self._available_splits(root)}

  def _available_splits(self, root: Path) -> Iterable[str]:
    return self.SPLITS

  def _generate_examples(self, root: Path, split: str):
    for key, rec in self._examples(root, split):
      rec.setdefault('id', str(key))
      yield str(key), rec

  def _examples(self, root: Path, split: str) -> Iterator[tuple[str, dict]]:
    raise NotImplementedError


# ---------------------------------------------------------------------------------------------------
# Format families shared by several builders.


def karpathy_captions(root: Path, json_name: str, image_dir: str, split: str) -> Iterator[tuple[str, dict]]:
  """Karpathy-split caption files (dataset_coco.json, dataset_flickr30k.json).

  Splits: 'train' (train + restval, as usual for COCO), 'val', 'test'. Images at
  <root>/<image_dir>/<filepath>/<filename> (filepath is empty for Flickr30k).
  """
  data = read_json(require(root / json_name, json_name))
  wanted = {'train': ('train', 'restval')}.get(split, (split,))
  for img in data['images']:
    if img['split'] not in wanted:
      continue
    path = root / image_dir / img.get('filepath', '') / img['filename']
    caps = [s.get('raw', ' '.join(s.get('tokens', []))).strip() for s in img['sentences']]
    key = str(img.get('cocoid', img.get('imgid', img['filename'])))
    yield key, {'id': key, 'image': read_bytes(path), 'captions': caps}


def vqa_questions(root: Path, questions_file: str, annotations_file: str | None, image_path_fn
                  ) -> Iterator[tuple[str, dict]]:
  """VQAv2/OKVQA official files: {'questions': [...]} and {'annotations': [...]} joined by question_id.

  Without an annotations file (test splits) answers are empty.
  """
  questions = read_json(require(root / questions_file, questions_file))['questions']
  answers: dict[int, dict] = {}
  if annotations_file:
    for a in read_json(require(root / annotations_file, annotations_file))['annotations']:
      answers[a['question_id']] = a
  for q in questions:
    ann = answers.get(q['question_id'], {})
    key = str(q['question_id'])
    yield key, {'id': key, 'image': read_bytes(image_path_fn(q['image_id'])), 'question': q['question'],
                'answers': [a['answer'] for a in ann.get('answers', [])],
                'question_type': ann.get('answer_type', ann.get('question_type', ''))}


def tar_pairs(tar_path: Path) -> Iterator[tuple[str, dict]]:
  """WebDataset-style shards: members <key>.<image ext> and <key>.txt make one pair."""
  images: dict[str, bytes] = {}
  texts: dict[str, str] = {}
  with tarfile.open(tar_path) as tar:
    for member in tar:
      if not member.isfile():
        continue
      stem, ext = os.path.splitext(member.name)
      data = tar.extractfile(member).read()
      if ext.lower() == '.txt':
        texts[stem] = data.decode('utf-8', errors='replace')
      elif ext.lower() in IMAGE_EXTENSIONS:
        images[stem] = data
  for stem in sorted(set(images) | set(texts)):
    key = f'{tar_path.stem}/{stem}'
    yield key, {'id': key, 'image': images.get(stem, b''), 'text': texts.get(stem, '')}


def frames_fps(root: Path) -> float:
  """The rate frames were extracted at: <root>/frames_fps.txt, default 1."""
  f = root / 'frames_fps.txt'
  return float(f.read_text().strip()) if f.exists() else 1.0


def segment_frames(folder: Path, fps: float, start: float | None = None, end: float | None = None) -> list[bytes]:
  """The encoded frames of a folder extracted at `fps` whose time i / fps lies in [start, end) (the whole
  folder without bounds); a folder that is absent gives [] (the pipeline drops the record)."""
  files = frame_files(folder)
  if start is not None:
    files = [p for i, p in enumerate(files) if start <= i / fps < (end if end is not None else float('inf'))]
  return [read_bytes(p) for p in files]


def read_csv(path: Path) -> list[dict[str, str]]:
  import csv

  with open(require(path, path.name), newline='') as f:
    return list(csv.DictReader(f))
