"""VATEX English captions (kind 'video_captions') from the official json files and extracted frames.

Manual directory:
    vatex_training_v1.0.json, vatex_validation_v1.0.json   lists of {"videoID", "enCap": [10 captions], ...}
    frames/<videoID>/*.jpg       frames extracted from the clip at frames_fps
    frames_fps.txt (optional)    the extraction rate in frames per second (default 1)
Splits: train (support pool), validation (the paper's DEV split).
"""

from pathlib import Path

from flamingo_jax_datasets import common
from flamingo_jax_datasets.msvd_qa.msvd_qa import frames_fps

_FILES = {"train": "vatex_training_v1.0.json", "validation": "vatex_validation_v1.0.json"}


class Builder(common.FileBuilder):
    """VATEX clips (as frames) and their English captions."""

    name = "vatex"
    KIND = "video_captions"
    SPLITS = tuple(_FILES)

    def _examples(self, root: Path, split: str):
        fps = frames_fps(root)
        for rec in common.read_json(common.require(root / _FILES[split], _FILES[split])):
            vid = rec["videoID"]
            yield vid, {
                "id": vid, "frames": [common.read_bytes(p) for p in common.frame_files(root / "frames" / vid)],
                "fps": fps, "captions": list(rec.get("enCap", []))
            }
