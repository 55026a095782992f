"""MSVD-QA (kind 'video_qa') from the official qa files and extracted frames.

Manual directory:
  {train,val,test}_qa.json     lists of {"answer", "id", "question", "video_id"}
  frames/vid<video_id>/*.jpg   frames extracted from video/vid<video_id>.avi at frames_fps
  frames_fps.txt (optional)    the extraction rate in frames per second (default 1)
Videos must be decoded to frames beforehand (ffmpeg -i vid1.avi -r 1 frames/vid1/%05d.jpg).
Splits: train (support pool), validation, test.
"""

from pathlib import Path

from flamingo_jax_datasets import common

_SPLITS = {"train": "train", "validation": "val", "test": "test"}


def frames_fps(root: Path) -> float:
    f = root / "frames_fps.txt"
    return float(f.read_text().strip()) if f.exists() else 1.0


class Builder(common.FileBuilder):
    """MSVD-QA questions, one-word answers and frame folders."""

    name = "msvd_qa"
    KIND = "video_qa"
    SPLITS = tuple(_SPLITS)

    def _examples(self, root: Path, split: str):
        f = f"{_SPLITS[split]}_qa.json"
        fps = frames_fps(root)
        cache: dict[int, list[bytes]] = {}
        for rec in common.read_json(common.require(root / f, f)):
            vid = int(rec["video_id"])
            if vid not in cache:  # several questions per video: read its frames once
                cache = {vid: [common.read_bytes(p) for p in common.frame_files(root / "frames" / f"vid{vid}")]}
            key = str(rec["id"])
            yield key, {
                "id": key, "frames": cache[vid], "fps": fps, "question": rec["question"], "answers": [rec["answer"]],
                "question_type": rec["question"].split()[0].lower()
            }
