"""NExT-QA open-ended (kind 'video_qa'; scored by WUPS) from the official NExT-OE files.

Manual directory:
    {train,val,test}.csv              columns video, frame_count, width, height, question, answer, qid, type
    map_vid_vidorID.json (optional)   {video: "<folder>/<video>"}, where the video's frames are
    frames/<folder>/<video>/*.jpg     (or frames/<video>/ without the map), extracted at frames_fps
    frames_fps.txt (optional)         the extraction rate (default 1)
Splits: train (support pool), validation, test. question_type: the csv's type (CW, CH, TN, TC, DB, DC, ...).
"""

from flamingo_jax_datasets import clips, common


class Builder(clips.VideoQaBuilder):
    """NExT-QA questions with their free-form answers and frame folders."""

    name = "nextqa"

    def _clips(self, root, official):
        where = common.read_json(root / "map_vid_vidorID.json") if (root / "map_vid_vidorID.json").exists() else {}
        for row in common.read_csv(root / f"{official}.csv"):
            video = row["video"]
            fields = clips.qa_fields(row["question"], [row["answer"]], row["type"])
            yield f"{video}_{row['qid']}", clips.Clip(where.get(video, video)), fields
