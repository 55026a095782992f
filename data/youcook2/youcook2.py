"""YouCook2 (kind 'video_captions': one record per annotated recipe segment) from the official files.

Manual directory:
    youcookii_annotations_trainval.json   {"database": {video_id: {"subset": "training" | "validation",
                                        "annotations": [{"id", "segment": [start s, end s], "sentence"}]}}}
    frames/<video_id>/*.jpg               the whole video's frames extracted at frames_fps
    frames_fps.txt (optional)             the extraction rate (default 1)
Splits: train (support pool), validation (the test annotations are not public).
"""

from flamingo_jax_datasets import clips, common


class Builder(clips.ClipBuilder):
    """YouCook2 segments (their frames) and their sentences."""

    name = "youcook2"
    KIND = "video_captions"
    OFFICIAL = {"train": "training", "validation": "validation"}  # the annotations' "subset"

    def _clips(self, root, official):
        f = "youcookii_annotations_trainval.json"
        for vid, v in sorted(common.read_json(common.require(root / f, f))["database"].items()):
            if v["subset"] != official:
                continue
            for seg in v["annotations"]:
                start, end = seg["segment"]
                yield f"{vid}_{seg['id']}", clips.Clip(vid, start, end), {"captions": [seg["sentence"]]}
