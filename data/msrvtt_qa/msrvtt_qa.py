"""MSRVTT-QA (kind 'video_qa', top-1 accuracy) from the official qa files and extracted frames.

Manual directory:
    {train,val,test}_qa.json        lists of {"answer", "category_id", "id", "question", "video_id": int}
    frames/video<video_id>/*.jpg    frames extracted from video<video_id>.mp4 at frames_fps
    frames_fps.txt (optional)       the extraction rate (default 1)
Splits: train (support pool), validation, test.
"""

from flamingo_jax_datasets import clips


class Builder(clips.VideoQaBuilder):
    """MSRVTT-QA questions, one-word answers and frame folders."""

    name = "msrvtt_qa"

    def _clips(self, root, official):
        return clips.qa_json(root, official, "video{}")
