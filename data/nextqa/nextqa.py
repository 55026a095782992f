"""NExT-QA open-ended (kind 'video_qa'; scored by WUPS) from the official NExT-OE files.

Manual directory:
    {train,val,test}.csv              columns video, frame_count, width, height, question, answer, qid, type
    map_vid_vidorID.json (optional)   {video: "<folder>/<video>"}, where the video's frames are
    frames/<folder>/<video>/*.jpg     (or frames/<video>/ without the map), extracted at frames_fps
    frames_fps.txt (optional)         the extraction rate (default 1)
Splits: train (support pool), validation, test. question_type: the csv's type (CW, CH, TN, TC, DB, DC, ...).
"""

from pathlib import Path

from flamingo_jax_datasets import common

_SPLITS = {"train": "train", "validation": "val", "test": "test"}


class Builder(common.FileBuilder):
    """NExT-QA questions with their free-form answers and frame folders."""

    name = "nextqa"
    KIND = "video_qa"
    SPLITS = tuple(_SPLITS)

    def _examples(self, root: Path, split: str):
        fps = common.frames_fps(root)
        where = common.read_json(root / "map_vid_vidorID.json") if (root / "map_vid_vidorID.json").exists() else {}
        cache: dict[str, list[bytes]] = {}
        for row in common.read_csv(root / f"{_SPLITS[split]}.csv"):
            video = row["video"]
            if video not in cache:
                cache = {video: common.segment_frames(root / "frames" / where.get(video, video), fps)}
            key = f"{video}_{row['qid']}"
            yield key, {
                "id": key, "frames": cache[video], "fps": fps, "question": row["question"], "answers": [row["answer"]],
                "question_type": row["type"]
            }
