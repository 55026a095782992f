"""MSVD-QA (kind 'video_qa') from the official qa files and extracted frames.

Manual directory:
    {train,val,test}_qa.json     lists of {"answer", "id", "question", "video_id"}
    frames/vid<video_id>/*.jpg   frames extracted from video/vid<video_id>.avi at frames_fps
    frames_fps.txt (optional)    the extraction rate in frames per second (default 1)
Videos must be decoded to frames beforehand (ffmpeg -i vid1.avi -r 1 frames/vid1/%05d.jpg).
Splits: train (support pool), validation, test.
"""

from flamingo_jax_datasets import clips


class Builder(clips.VideoQaBuilder):
    """MSVD-QA questions, one-word answers and frame folders."""

    name = "msvd_qa"

    def _clips(self, root, official):
        return clips.qa_json(root, official, "vid{}")
