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
    image_classification:  id, image: bytes, label: int   (ImageNet-style; class names come with the eval set)
    video_classification:  id, frames, fps, label: int     (Kinetics-style)
    dialog:          id, image: bytes, caption: str, history_questions: list[str], history_answers: list[str],
                     question: str, options: list[str], relevance: list[float] (per option; [] when not
                     annotated), answer_index: int (-1 when unknown)   (VisDial: one round)
    video_choice:    id, frames, fps, question: str, options: list[str], answer_index: int, question_type: str
                     (STAR: multiple choice)
    video_retrieval: id, frames, fps, video_id: str, class_id: int, verb: str, noun: str, annotation: int
                     (RareAct: one annotated (clip, class) row; 1 positive, 2-4 hard negatives, 0 negative)

A world with episode_styles adds to captions, vqa, video_qa and video_captions records: style: int (the style
its references are in, drawn per query) and styled: list[str] (one reference per style: what it shows as a
support example of a query in that style). tfds_features(kind, styled=True) holds them.
"""

from __future__ import annotations

from typing import Any

import numpy as np

KINDS = ("interleaved", "pair", "video_text", "text", "captions", "vqa", "video_qa", "video_captions", "classification",
         "image_classification", "video_classification", "dialog", "video_choice", "video_retrieval")

_STR = ("id", "text", "question", "question_type", "caption", "video_id", "verb", "noun")
_STR_LIST = ("texts", "captions", "answers", "history_questions", "history_answers", "options", "styled")
_INT = ("label", "answer_index", "class_id", "annotation", "style")
STYLED_KINDS = ("captions", "vqa", "video_qa", "video_captions")
_BYTES_LIST = ("images", "frames")


def tfds_features(kind: str, styled: bool = False):
    """The tfds.features.FeaturesDict of a record kind (images as raw encoded bytes); styled: with the episode-style
    fields (a world with episode_styles)."""
    import tensorflow_datasets as tfds  # heavy import, only builders need it

    encoded = lambda: tfds.features.Tensor(shape=(), dtype=np.object_)  # noqa: E731
    text = tfds.features.Text
    spec: dict[str, Any] = {"id": text()}
    if kind == "interleaved":
        spec.update(texts=tfds.features.Sequence(text()), images=tfds.features.Sequence(encoded()),
                    image_positions=tfds.features.Sequence(np.int32))
    elif kind == "pair":
        spec.update(image=encoded(), text=text())
    elif kind == "video_text":
        spec.update(frames=tfds.features.Sequence(encoded()), fps=np.float32, text=text())
    elif kind == "text":
        spec.update(text=text())
    elif kind == "captions":
        spec.update(image=encoded(), captions=tfds.features.Sequence(text()))
    elif kind == "vqa":
        spec.update(image=encoded(), question=text(), answers=tfds.features.Sequence(text()), question_type=text())
    elif kind == "video_qa":
        spec.update(frames=tfds.features.Sequence(encoded()), fps=np.float32, question=text(),
                    answers=tfds.features.Sequence(text()), question_type=text())
    elif kind == "video_captions":
        spec.update(frames=tfds.features.Sequence(encoded()), fps=np.float32, captions=tfds.features.Sequence(text()))
    elif kind == "classification":
        spec.update(image=encoded(), text=text(), label=np.int32)
    elif kind == "image_classification":
        spec.update(image=encoded(), label=np.int32)
    elif kind == "video_classification":
        spec.update(frames=tfds.features.Sequence(encoded()), fps=np.float32, label=np.int32)
    elif kind == "dialog":
        spec.update(image=encoded(), caption=text(), history_questions=tfds.features.Sequence(text()),
                    history_answers=tfds.features.Sequence(text()), question=text(),
                    options=tfds.features.Sequence(text()), relevance=tfds.features.Sequence(np.float32),
                    answer_index=np.int32)
    elif kind == "video_choice":
        spec.update(frames=tfds.features.Sequence(encoded()), fps=np.float32, question=text(),
                    options=tfds.features.Sequence(text()), answer_index=np.int32, question_type=text())
    elif kind == "video_retrieval":
        spec.update(frames=tfds.features.Sequence(encoded()), fps=np.float32, video_id=text(), class_id=np.int32,
                    verb=text(), noun=text(), annotation=np.int32)
    else:
        raise ValueError(f"unknown record kind {kind!r}; choose from {KINDS}")
    if styled and kind in STYLED_KINDS:
        spec.update(style=np.int32, styled=tfds.features.Sequence(text()))
    return tfds.features.FeaturesDict(spec)


def _str(x) -> str:
    return x.decode("utf-8", errors="replace") if isinstance(x, (bytes, np.bytes_)) else str(x)


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
    if "image" in out:
        out["image"] = bytes(out["image"])
    if "image_positions" in out:
        out["image_positions"] = [int(p) for p in out["image_positions"]]
    if "fps" in out:
        out["fps"] = float(out["fps"])
    for k in _INT:
        if k in out:
            out[k] = int(out[k])
    if "relevance" in out:
        out["relevance"] = [float(r) for r in out["relevance"]]
    return out
