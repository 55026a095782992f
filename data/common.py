"""Shared pieces of the real-file builders: the base class, file reading, and per-format-family parsers.

Every real-file builder reads the user's local copy of a dataset from the TFDS manual directory
(`--manual_dir`, default <data_dir>/downloads/manual/) in the dataset's official layout; nothing is
downloaded. Images are stored as their encoded bytes.

Bad records never stop a build and never pass silently (FileBuilder._generate_examples): every record of a
training kind is checked while it is prepared (each image fully decoded) and a record that cannot train is
skipped and counted by reason (bad_json, missing_image, empty_image, undecodable_image, empty_text,
too_many_images, no_images, no_frames, truncated_shard, ...); an interleaved page or a clip loses only its bad
images/frames (counted as repairs). Evaluation kinds keep every record (an eval set must not shrink silently)
but their bad images are counted. The counts of a build are in `builder.tallies` and are written by
flamingo_jax.data.builders.prepare to <prepared dir>/prepare_report.json.
"""

from __future__ import annotations

import base64
import binascii
import collections
import json
import logging
import os
import sys
import tarfile
import time
import zipfile
from pathlib import Path
from typing import Any, Iterable, Iterator

import tensorflow_datasets as tfds

from flamingo_jax.data import schema

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif")
log = logging.getLogger(__name__)


class Missing(bytes):
    """b'' that remembers it stands for a file that is absent (reason missing_image), unlike a zero-byte file
    (empty_image). A bytes subclass so that evaluation builders, which keep such records, still store b''."""


MISSING = Missing()


class Skip:
    """Yielded by a builder's _examples instead of a record that cannot be read at all (bad json, a record
    without captions, the unread rest of a truncated shard): counted under `reason`, never written."""

    def __init__(self, reason: str, detail: str = ""):
        self.reason, self.detail = reason, detail


def read_bytes(path: os.PathLike | str) -> bytes:
    """The file's bytes, or MISSING (b'') when it is absent."""
    try:
        return Path(path).read_bytes()
    except (FileNotFoundError, IsADirectoryError):
        return MISSING


def image_problem(data: bytes) -> str | None:
    """None for an image that decodes, else the reason: missing_image | empty_image | undecodable_image."""
    from flamingo_jax.data.images import BadRecord, decode_image

    if isinstance(data, Missing) or data is None:
        return "missing_image"
    if not data:
        return "empty_image"
    try:
        decode_image(data)  # a full decode: a truncated JPEG opens fine and fails only here
    except BadRecord:
        return "undecodable_image"
    return None


def decode_base64(text: str) -> bytes:
    """Image bytes embedded in json as base64. OpenFlamingo's MMC4 converter writes str(b64 bytes), i.e. the
    text "b'...'": both spellings are read. Bad base64 gives b'' (counted as empty_image)."""
    text = text.strip()
    if text[:2] in ("b'", 'b"') and text[-1:] in ("'", '"'):
        text = text[2:-1]
    try:
        return base64.b64decode(text, validate=False)
    except (binascii.Error, ValueError):
        return b""


def check_record(kind: str, rec: dict, max_doc_images: int) -> tuple[dict | None, str | None, list[str]]:
    """Preparation-time check of one record: (record or None, skip reason or None, repair events).

    Training kinds are repaired or skipped (rules in the module docstring); the image of an evaluation kind is
    checked and its problem reported as the event 'bad_image_kept/<reason>', the record kept."""
    events: list[str] = []
    if kind == "interleaved":
        if not any(t.strip() for t in rec["texts"]):
            return None, "empty_text", events
        if not rec["images"]:
            return None, "no_images", events
        if len(rec["images"]) > max_doc_images:
            return None, "too_many_images", events
        keep, first_bad = [], None
        for k, data in enumerate(rec["images"]):
            problem = image_problem(data)
            if problem:
                events.append(f"image_removed/{problem}")
                first_bad = first_bad or problem
            else:
                keep.append(k)
        if not keep:  # the page's every image is bad: skipped under the (first) image's reason
            return None, first_bad, events
        rec = dict(rec, images=[rec["images"][k] for k in keep],
                   image_positions=[rec["image_positions"][k] for k in keep])
        return rec, None, events
    if kind in ("pair", "video_text", "text") and not rec["text"].strip():
        return None, "empty_text", events
    if kind == "pair":
        problem = image_problem(rec["image"])
        return (None, problem, events) if problem else (rec, None, events)
    if kind == "video_text":
        if not rec["frames"]:
            return None, "no_frames", events
        problems = [image_problem(f) for f in rec["frames"]]
        good = [f for f, p in zip(rec["frames"], problems) if not p]
        events += [f"frame_removed/{p}" for p in problems if p]
        if not good:
            return None, next(p for p in problems if p), events
        return dict(rec, frames=good), None, events
    if "image" in rec:  # evaluation kinds: keep, report
        problem = image_problem(rec["image"])
        if problem:
            events.append(f"bad_image_kept/{problem}")
    for f in rec.get("frames", []):
        problem = image_problem(f)
        if problem:
            events.append(f"bad_frame_kept/{problem}")
    return rec, None, events


class Progress:
    """A log line at most every `every` seconds while a split is prepared: records written and skipped,
    records/s, and an ETA when the builder reports how many of its input files (shards) are done."""

    def __init__(self, name: str, every: float = 10.0):
        self.name, self.every = name, every
        self.t0 = self.last = time.perf_counter()
        self.written = self.skipped = 0
        self.units_done, self.units_total = 0, 0

    def units(self, done: int, total: int) -> None:
        self.units_done, self.units_total = done, total

    def tick(self, written: int = 0, skipped: int = 0, force: bool = False) -> None:
        self.written += written
        self.skipped += skipped
        now = time.perf_counter()
        if not force and now - self.last < self.every:
            return
        self.last = now
        rate = (self.written + self.skipped) / max(now - self.t0, 1e-9)
        eta = ""
        if self.units_total and self.units_done:
            left = (now - self.t0) * (self.units_total - self.units_done) / self.units_done
            eta = f", shard {self.units_done}/{self.units_total}, ETA {left:.0f} s"
        message = (f"[prepare] {self.name}: {self.written} written, {self.skipped} skipped, {rate:.1f} records/s"
                   f"{eta}")
        log.warning(message)
        print(message, flush=True)


def read_json(path: os.PathLike | str) -> Any:
    with open(path) as f:
        return json.load(f)


def _jsonl_text(path: os.PathLike | str, errors: str) -> str:
    """The text of a .jsonl file, or of the single .jsonl inside a .zip (MMC4 releases zipped shards)."""
    path = Path(path)
    if path.suffix == ".zip":
        with zipfile.ZipFile(path) as z:
            names = [n for n in z.namelist() if n.endswith(".jsonl")]
            if len(names) != 1:
                raise ValueError(f"{path} should hold exactly one .jsonl file, found {names}")
            return z.read(names[0]).decode("utf-8", errors=errors)
    return path.read_text(errors=errors)


def read_jsonl(path: os.PathLike | str) -> Iterator[dict]:
    """The records of a .jsonl file (or the .jsonl in a .zip); undecodable bytes or a bad line raise."""
    for line in _jsonl_text(path, "strict").splitlines():
        if line.strip():
            yield json.loads(line)


def read_jsonl_lines(path: os.PathLike | str) -> Iterator[str]:
    """The non-empty lines of a .jsonl file (or the .jsonl in a .zip), unparsed: a builder that must skip a
    bad line (and count it) instead of stopping parses them itself."""
    text = _jsonl_text(path, "replace")
    return (line for line in text.splitlines() if line.strip())


def frame_files(folder: os.PathLike | str) -> list[Path]:
    """The image files of a frame folder in name order (frame_0001.jpg, ...)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)


def require(path: Path, what: str) -> Path:
    """A clear error naming the fix when an expected manual file is absent."""
    if not path.exists():
        raise FileNotFoundError(f"{what} not found at {path}: put the official files in the manual directory "
                                "(tfds --manual_dir, or config.data.manual_dir) as described in the builder docstring")
    return path


class FileBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Base for builders of local files. Subclasses set name, KIND, SPLITS and implement _examples."""

    KIND = "pair"
    SPLITS: tuple[str, ...] = ("train", )
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = "Place the official files in the manual directory."

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        # Each builder's module docstring describes its manual-directory layout: TFDS shows it when it is missing.
        doc = sys.modules[cls.__module__].__doc__
        if doc:
            cls.MANUAL_DOWNLOAD_INSTRUCTIONS = doc

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(builder=self, description=(type(self).__doc__ or "").strip(),
                                     features=schema.tfds_features(self.KIND))

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        root = Path(dl_manager.manual_dir)
        return {split: self._generate_examples(root, split) for split in self._available_splits(root)}

    def _available_splits(self, root: Path) -> Iterable[str]:
        return self.SPLITS

    # Interleaved pages with more images are skipped (too_many_images), as config.data's max_doc_images default.
    MAX_DOC_IMAGES = 32

    @property
    def tallies(self) -> dict[str, collections.Counter]:
        """split -> Counter of 'written', 'skipped/<reason>' and repair events, of the last build."""
        if not hasattr(self, "_tallies"):
            self._tallies = {}
        return self._tallies

    def _generate_examples(self, root: Path, split: str):
        tally = self.tallies.setdefault(split, collections.Counter())
        self.progress = Progress(f'{self.name}/{self.builder_config.name if self.builder_config else ""}/{split}')
        for key, rec in self._examples(root, split):
            if isinstance(rec, Skip):
                tally[f"skipped/{rec.reason}"] += 1
                log.info("%s %s: skipped %s (%s) %s", self.name, split, key, rec.reason, rec.detail)
                self.progress.tick(skipped=1)
                continue
            rec.setdefault("id", str(key))
            rec, reason, events = check_record(self.KIND, rec, self.MAX_DOC_IMAGES)
            for ev in events:
                tally[ev] += 1
            if rec is None:
                tally[f"skipped/{reason}"] += 1
                self.progress.tick(skipped=1)
                continue
            tally["written"] += 1
            self.progress.tick(written=1)
            yield str(key), rec
        self.progress.tick(force=True)

    def _examples(self, root: Path, split: str) -> Iterator[tuple[str, dict]]:
        raise NotImplementedError


# ---------------------------------------------------------------------------------------------------
# Format families shared by several builders.


class JsonlSplitsBuilder(FileBuilder, skip_registration=True):
    """Base of the builders whose manual directory holds one <split>.jsonl per split, under any split names."""

    def _available_splits(self, root: Path) -> list[str]:
        splits = sorted(p.stem for p in root.glob("*.jsonl"))
        if not splits:
            raise FileNotFoundError(f"no <split>.jsonl in {root}; see the {self.name} docstring")
        return splits


class KarpathyBuilder(FileBuilder, skip_registration=True):
    """Base of the Karpathy-split caption builders (kind 'captions'): subclasses set name, JSON_FILE (Karpathy's
    split file) and IMAGE_DIR (the images' folder in the manual directory); see karpathy_captions."""

    KIND = "captions"
    SPLITS = ("train", "val", "test")
    JSON_FILE = ""
    IMAGE_DIR = ""

    def _examples(self, root: Path, split: str):
        return karpathy_captions(root, self.JSON_FILE, self.IMAGE_DIR, split)


def karpathy_captions(root: Path, json_name: str, image_dir: str, split: str) -> Iterator[tuple[str, dict]]:
    """Karpathy-split caption files (dataset_coco.json, dataset_flickr30k.json).

    Splits: 'train' (train + restval, as usual for COCO), 'val', 'test'. Images at
    <root>/<image_dir>/<filepath>/<filename> (filepath is empty for Flickr30k).
    """
    data = read_json(require(root / json_name, json_name))
    wanted = {"train": ("train", "restval")}.get(split, (split, ))
    for img in data["images"]:
        if img.get("split") not in wanted:
            continue
        key = str(img.get("cocoid", img.get("imgid", img.get("filename", ""))))
        if "filename" not in img:
            yield key, Skip("no_image_file", 'an images[] entry without "filename"')
            continue
        path = root / image_dir / img.get("filepath", "") / img["filename"]
        caps = [s.get("raw", " ".join(s.get("tokens", []))).strip() for s in img.get("sentences", [])]
        caps = [c for c in caps if c]
        if not caps:  # nothing to score a caption against: not an evaluation example
            yield key, Skip("no_captions", f'{img["filename"]} has no "sentences"')
            continue
        yield key, {"id": key, "image": read_bytes(path), "captions": caps}


def webdataset_key(name: str) -> tuple[str, str]:
    """(sample key, field) of a WebDataset member: the key is the path up to the first dot of the base name
    ('a/b/000123.0.jpg' -> ('a/b/000123', '0.jpg')), the webdataset library's convention."""
    folder, base = os.path.split(name)
    stem, _, field = base.partition(".")
    return os.path.join(folder, stem), field


def tar_samples(tar_path: Path) -> Iterator[tuple[str, dict[str, bytes] | Skip]]:
    """The samples of a WebDataset shard in order: (key, {field: bytes}).

    A truncated shard (cut inside a member, or with no end-of-archive blocks) yields its complete samples,
    drops the sample it was cut in, and ends with (shard name, Skip('truncated_shard')); a file that is not
    a tar at all gives Skip('unreadable_shard'). Neither stops the build."""
    current, fields = None, {}
    try:
        with tarfile.open(tar_path) as tar:
            for member in tar:
                if not member.isfile():
                    continue
                key, field = webdataset_key(member.name)
                if key != current:  # a new sample starts: the previous one is complete
                    if current is not None:
                        yield current, fields
                    current, fields = key, {}
                fields[field.lower()] = tar.extractfile(member).read()
            end = tar.offset
        # A complete archive ends with two zero blocks after its last member; a cut at a member boundary
        # reads like a clean end to tarfile, so the size tells.
        if os.path.getsize(tar_path) < end + 2 * tarfile.BLOCKSIZE:
            raise tarfile.ReadError("no end-of-archive blocks")
    except (tarfile.ReadError, EOFError, OSError) as e:  # tarfile.ReadError subclasses TarError, not OSError
        if current is None and not fields:
            yield tar_path.name, Skip("unreadable_shard" if "end of data" not in str(e) else "truncated_shard", str(e))
            return
        yield tar_path.name, Skip("truncated_shard", f"{e}; the sample {current!r} it was cut in is dropped")
        return
    if current is not None:
        yield current, fields


def text_of(fields: dict[str, bytes], *json_keys: str) -> str | None:
    """A pair's caption: the .txt member, else the first of json_keys in the .json member; None if neither."""
    if "txt" in fields:
        return fields["txt"].decode("utf-8", errors="replace")
    if "json" in fields:
        try:
            meta = json.loads(fields["json"])
        except ValueError:
            return None
        for k in json_keys:
            if isinstance(meta, dict) and isinstance(meta.get(k), str):
                return meta[k]
    return None


def tar_pairs(tar_path: Path) -> Iterator[tuple[str, dict | Skip]]:
    """LAION-style WebDataset shards (img2dataset's output): <key>.jpg|png|webp|... with <key>.txt, or
    <key>.json holding "caption" (or "text"), make one pair. A sample without an image member gets MISSING,
    one without any caption empty text: both are skipped and counted by the build."""
    for key, fields in tar_samples(tar_path):
        if isinstance(fields, Skip):
            yield f"{tar_path.stem}/{key}", fields
            continue
        image = next((v for f, v in fields.items() if "." + f.rsplit(".", 1)[-1] in IMAGE_EXTENSIONS), MISSING)
        name = f"{tar_path.stem}/{key}"
        yield name, {"id": name, "image": image, "text": text_of(fields, "caption", "text") or ""}


def frames_fps(root: Path) -> float:
    """The rate frames were extracted at: <root>/frames_fps.txt, default 1."""
    f = root / "frames_fps.txt"
    return float(f.read_text().strip()) if f.exists() else 1.0


def segment_frames(folder: Path, fps: float, start: float | None = None, end: float | None = None) -> list[bytes]:
    """The encoded frames of a folder extracted at `fps` whose time i / fps lies in [start, end) (the whole
    folder without bounds); a folder that is absent gives [] (the pipeline drops the record)."""
    files = frame_files(folder)
    if start is not None:
        files = [p for i, p in enumerate(files) if start <= i / fps < (end if end is not None else float("inf"))]
    return [read_bytes(p) for p in files]


def read_csv(path: Path) -> list[dict[str, str]]:
    import csv

    with open(require(path, path.name), newline="") as f:
        return list(csv.DictReader(f))
