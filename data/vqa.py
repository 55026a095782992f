"""One builder for the image VQA benchmarks (VQAv2, OK-VQA, VizWiz, TextVQA; paper Table 1 / Appendix B.1).

Their official files differ only in names and in how they spell a question record (a VqaLayout): VQAv2 and
OK-VQA keep questions and answers in two files joined by question_id; VizWiz keeps one list of records keyed
by image; TextVQA one {"data": [...]} file. Each builder module sets its `name` and LAYOUT; the records are
the same for all: id, image (encoded bytes), question, answers (the human answers), question_type.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable, Iterator

from flamingo_jax_datasets import common

# Our split names -> the official files' ({s} in a VqaLayout's file names).
SPLITS = {"train": "train", "validation": "val"}


@dataclasses.dataclass(frozen=True)
class VqaLayout:
    """Where a VQA dataset's files are and how its question records are spelled.

    questions:    the json file of question records ({s}: the official split name);
    records_key:  where the list of records is inside that file ('' = the file is the list);
    image:        (official split, record) -> the image file, relative to the manual directory;
    annotations:  a second json file {"annotations": [...]} joined to the questions by question_id ('' = none);
    key:          the record field that names it (str() of it is the record's id);
    type_fields:  the record fields tried in order for question_type ('' when none is present).
    A record's answers are its "answers" list: strings, or dicts whose "answer" is taken.
    """

    questions: str
    image: Callable[[str, dict], str]
    records_key: str = ""
    annotations: str = ""
    key: str = "question_id"
    type_fields: tuple[str, ...] = ("answer_type", )

    def records(self, root: Path, s: str) -> Iterator[tuple[str, dict]]:
        """(key, record) of the official split s, in the questions file's order."""
        questions = read_file(root, self.questions.format(s=s))
        records = questions[self.records_key] if self.records_key else questions
        joined: dict[int, dict] = {}
        if self.annotations:
            joined = {a["question_id"]: a for a in read_file(root, self.annotations.format(s=s))["annotations"]}
        for q in records:
            rec = dict(q, **joined.get(q["question_id"], {})) if self.annotations else q
            key = str(rec[self.key])
            yield key, {
                "id": key, "image": common.read_bytes(root / self.image(s, rec)), "question": rec["question"],
                "answers": [a["answer"] if isinstance(a, dict) else a for a in rec.get("answers", [])],
                "question_type": next((rec[f] for f in self.type_fields if f in rec), "")
            }


def read_file(root: Path, name: str):
    """A manual-directory json file, or an error naming it and the fix."""
    return common.read_json(common.require(root / name, name))


def coco_image(s: str, rec: dict) -> str:
    """VQAv2 / OK-VQA images: the COCO 2014 file of the record's image_id."""
    return f"{s}2014/COCO_{s}2014_{int(rec['image_id']):012d}.jpg"


def coco_layout(questions: str, annotations: str) -> VqaLayout:
    """The VQAv2 file layout (OK-VQA uses it too): questions and annotations joined by question_id, COCO images;
    question_type is the annotation's answer_type (yes/no, number, other), else its question_type."""
    return VqaLayout(questions, coco_image, records_key="questions", annotations=annotations,
                     type_fields=("answer_type", "question_type"))


class VqaBuilder(common.FileBuilder, skip_registration=True):
    """Base of the VQA builders: subclasses set name and LAYOUT."""

    KIND = "vqa"
    SPLITS = tuple(SPLITS)
    LAYOUT: VqaLayout

    def _examples(self, root: Path, split: str):
        return self.LAYOUT.records(root, SPLITS[split])
