"""YouCook2 (kind 'video_captions': one record per annotated recipe segment) from the official files.

Manual directory:
  youcookii_annotations_trainval.json   {"database": {video_id: {"subset": "training" | "validation",
                                        "annotations": [{"id", "segment": [start s, end s], "sentence"}]}}}
  frames/<video_id>/*.jpg               the whole video's frames extracted at frames_fps
  frames_fps.txt (optional)             the extraction rate (default 1)
Splits: train (support pool), validation (the test annotations are not public).
"""

from pathlib import Path

from flamingo_jax_datasets import common

_SUBSETS = {"train": "training", "validation": "validation"}


class Builder(common.FileBuilder):
    """YouCook2 segments (their frames) and their sentences."""

    name = "youcook2"
    KIND = "video_captions"
    SPLITS = tuple(_SUBSETS)

    def _examples(self, root: Path, split: str):
        f = "youcookii_annotations_trainval.json"
        db = common.read_json(common.require(root / f, f))["database"]
        fps = common.frames_fps(root)
        for vid, v in sorted(db.items()):
            if v["subset"] != _SUBSETS[split]:
                continue
            for seg in v["annotations"]:
                start, end = seg["segment"]
                key = f"{vid}_{seg['id']}"
                yield key, {
                    "id": key, "frames": common.segment_frames(root / "frames" / vid, fps, start, end), "fps": fps,
                    "captions": [seg["sentence"]]
                }
