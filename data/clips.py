"""One base for the video builders whose records are clips cut from folders of extracted frames.

MSVD-QA, MSRVTT-QA, iVQA, NExT-QA, STAR, RareAct, VATEX and YouCook2 (the paper's video benchmarks, Table 1)
all read frames/<video>/*.jpg extracted at frames_fps (common.frames_fps) and keep the frames whose time lies
in the clip's [start, end) seconds. A builder names its clips and their fields (ClipBuilder._clips); the base
reads the frames, once for consecutive records of the same clip (a video has about 20 questions in MSRVTT-QA),
and writes {"id", "frames", "fps", **fields}.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator, Mapping, NamedTuple

from flamingo_jax_datasets import common

# Our split names -> the official files' for the video QA sets (MSVD-QA, MSRVTT-QA, iVQA, NExT-QA).
QA_SPLITS = {"train": "train", "validation": "val", "test": "test"}


class Clip(NamedTuple):
    """frames/<video>/ of the manual directory, the part in [start, end) seconds (None: the whole video)."""

    video: str
    start: float | None = None
    end: float | None = None


class ClipBuilder(common.FileBuilder, skip_registration=True):
    """Base of the frame-folder video builders: subclasses set name, KIND, OFFICIAL and implement _clips."""

    # Our split name -> the official release's name (or file) for it; SPLITS are its keys.
    OFFICIAL: Mapping[str, str] = {}

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        cls.SPLITS = tuple(cls.OFFICIAL)

    def _clips(self, root: Path, official: str) -> Iterator[tuple[str, Clip, dict[str, Any]]]:
        """(key, clip, the record's other fields) for each record of a split, named as in OFFICIAL."""
        raise NotImplementedError

    def _examples(self, root: Path, split: str):
        fps = common.frames_fps(root)
        last, frames = None, []
        for key, clip, fields in self._clips(root, self.OFFICIAL[split]):
            if clip != last:  # consecutive records of one clip share its frames: read them once
                last, frames = clip, common.segment_frames(root / "frames" / clip.video, fps, clip.start, clip.end)
            yield key, {"id": key, "frames": frames, "fps": fps, **fields}


def qa_fields(question: str, answers: list[str], question_type: str = "") -> dict[str, Any]:
    """The fields of a 'video_qa' record besides its clip."""
    return {"question": question, "answers": answers, "question_type": question_type}


class VideoQaBuilder(ClipBuilder, skip_registration=True):
    """Base of the open-ended video QA builders (kind 'video_qa', splits train / validation / test)."""

    KIND = "video_qa"
    OFFICIAL = QA_SPLITS


def qa_json(root: Path, official: str, folder: str) -> Iterator[tuple[str, Clip, dict[str, Any]]]:
    """MSVD-QA / MSRVTT-QA's {train,val,test}_qa.json (lists of {"answer", "id", "question", "video_id"}): the
    whole video frames/<folder.format(video_id)>/, one-word answers, the question's first word as its type."""
    name = f"{official}_qa.json"
    for rec in common.read_json(common.require(root / name, name)):
        clip = Clip(folder.format(int(rec["video_id"])))
        yield str(rec["id"]), clip, qa_fields(rec["question"], [rec["answer"]], rec["question"].split()[0].lower())
