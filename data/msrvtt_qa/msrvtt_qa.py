"""MSRVTT-QA (kind 'video_qa', top-1 accuracy) from the official qa files and extracted frames.

Manual directory:
  {train,val,test}_qa.json        lists of {"answer", "category_id", "id", "question", "video_id": int}
  frames/video<video_id>/*.jpg    frames extracted from video<video_id>.mp4 at frames_fps
  frames_fps.txt (optional)       the extraction rate (default 1)
Splits: train (support pool), validation, test.
"""

from pathlib import Path

from flamingo_jax_datasets import common

_SPLITS = {"train": "train", "validation": "val", "test": "test"}


class Builder(common.FileBuilder):
    """MSRVTT-QA questions, one-word answers and frame folders."""

    name = "msrvtt_qa"
    KIND = "video_qa"
    SPLITS = tuple(_SPLITS)

    def _examples(self, root: Path, split: str):
        f = f"{_SPLITS[split]}_qa.json"
        fps = common.frames_fps(root)
        cache: dict[int, list[bytes]] = {}
        for rec in common.read_json(common.require(root / f, f)):
            vid = int(rec["video_id"])
            if vid not in cache:  # about 20 questions per video: read its frames once
                cache = {vid: common.segment_frames(root / "frames" / f"video{vid}", fps)}
            key = str(rec["id"])
            yield key, {
                "id": key, "frames": cache[vid], "fps": fps, "question": rec["question"], "answers": [rec["answer"]],
                "question_type": rec["question"].split()[0].lower()
            }
