"""STAR (kind 'video_choice': four choices, scored by accuracy) from the official question files.

Manual directory:
  STAR_train.json, STAR_val.json, STAR_test.json   lists of {"question_id", "question", "video_id", "start",
                                                   "end", "answer" (absent in test), "choices": [{"choice_id",
                                                   "choice"}]}
  frames/<video_id>/*.jpg      the Charades video's frames extracted at frames_fps (the clip is [start, end) s)
  frames_fps.txt (optional)    the extraction rate (default 1)
Splits: train (support pool), validation, test (those present; test has no answers: answer_index -1).
question_type: the question id's prefix (Interaction, Sequence, Prediction, Feasibility).
"""

from pathlib import Path

from flamingo_jax_datasets import clips, common


class Builder(clips.ClipBuilder):
    """STAR situated questions, their four choices and the Charades clips."""

    name = "star"
    KIND = "video_choice"
    OFFICIAL = {"train": "STAR_train.json", "validation": "STAR_val.json", "test": "STAR_test.json"}

    def _available_splits(self, root: Path):
        splits = [s for s, f in self.OFFICIAL.items() if (root / f).exists()]
        if not splits:
            raise FileNotFoundError(f"no STAR_train.json / STAR_val.json in {root}; see the star docstring")
        return splits

    def _clips(self, root, official):
        for q in common.read_json(root / official):
            options = [c["choice"] for c in sorted(q["choices"], key=lambda c: int(c["choice_id"]))]
            key = str(q["question_id"])
            yield key, clips.Clip(q["video_id"], float(q["start"]), float(q["end"])), {
                "question": q["question"], "options": options,
                "answer_index": options.index(q["answer"]) if q.get("answer") in options else -1,
                "question_type": key.split("_")[0]
            }
