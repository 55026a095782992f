"""VATEX English captions (kind 'video_captions') from the official json files and extracted frames.

Manual directory:
    vatex_training_v1.0.json, vatex_validation_v1.0.json   lists of {"videoID", "enCap": [10 captions], ...}
    frames/<videoID>/*.jpg       frames extracted from the clip at frames_fps
    frames_fps.txt (optional)    the extraction rate in frames per second (default 1)
Splits: train (support pool), validation (the paper's DEV split).
"""

from flamingo_jax_datasets import clips, common


class Builder(clips.ClipBuilder):
    """VATEX clips (as frames) and their English captions."""

    name = "vatex"
    KIND = "video_captions"
    OFFICIAL = {"train": "vatex_training_v1.0.json", "validation": "vatex_validation_v1.0.json"}

    def _clips(self, root, official):
        for rec in common.read_json(common.require(root / official, official)):
            yield rec["videoID"], clips.Clip(rec["videoID"]), {"captions": list(rec.get("enCap", []))}
