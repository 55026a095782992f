"""iVQA (kind 'video_qa' with the five annotators' answers; scored by iVQA accuracy) from the official files.

Manual directory:
    {train,val,test}.csv            columns video_id, start, end, question, answer1, ..., answer5
    frames/<video_id>/*.jpg         the whole video's frames extracted at frames_fps (the clip is [start, end) s)
    frames_fps.txt (optional)       the extraction rate (default 1)
Splits: train (support pool), validation, test.
"""

from pathlib import Path

from flamingo_jax_datasets import common

_SPLITS = {"train": "train", "validation": "val", "test": "test"}


class Builder(common.FileBuilder):
    """iVQA clips, questions and five answers each."""

    name = "ivqa"
    KIND = "video_qa"
    SPLITS = tuple(_SPLITS)

    def _examples(self, root: Path, split: str):
        fps = common.frames_fps(root)
        for i, row in enumerate(common.read_csv(root / f"{_SPLITS[split]}.csv")):
            key = f"{row['video_id']}_{row['start']}_{row['end']}_{i}"
            answers = [row[f"answer{k}"] for k in range(1, 6) if row.get(f"answer{k}")]
            yield key, {
                "id": key, "frames": common.segment_frames(root / "frames" / row["video_id"], fps, float(row["start"]),
                                                           float(row["end"])), "fps": fps, "question": row["question"],
                "answers": answers, "question_type": ""
            }
