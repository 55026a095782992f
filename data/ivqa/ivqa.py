"""iVQA (kind 'video_qa' with the five annotators' answers; scored by iVQA accuracy) from the official files.

Manual directory:
    {train,val,test}.csv            columns video_id, start, end, question, answer1, ..., answer5
    frames/<video_id>/*.jpg         the whole video's frames extracted at frames_fps (the clip is [start, end) s)
    frames_fps.txt (optional)       the extraction rate (default 1)
Splits: train (support pool), validation, test.
"""

from flamingo_jax_datasets import clips, common


class Builder(clips.VideoQaBuilder):
    """iVQA clips, questions and five answers each."""

    name = "ivqa"

    def _clips(self, root, official):
        for i, row in enumerate(common.read_csv(root / f"{official}.csv")):
            key = f"{row['video_id']}_{row['start']}_{row['end']}_{i}"
            answers = [row[f"answer{k}"] for k in range(1, 6) if row.get(f"answer{k}")]
            clip = clips.Clip(row["video_id"], float(row["start"]), float(row["end"]))
            yield key, clip, clips.qa_fields(row["question"], answers)
