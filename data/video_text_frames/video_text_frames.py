"""Video-text pairs (VTP-style) from extracted frame folders (kind 'video_text').

Manual directory:
    <split>.jsonl        one clip per line: {"video": "<folder>", "caption": "...", "fps": <frames per second
                       of the extracted frames>}
    frames/<folder>/*.jpg  the clip's frames, in name order
Videos must be decoded to frames beforehand (e.g. `ffmpeg -i clip.mp4 -r 2 frames/clip/%05d.jpg`): no
video decoder is a dependency of this project. A clip with no frame folder is stored with no frames
and skipped when the dataset is prepared (counted as no_frames).
"""

from pathlib import Path

from flamingo_jax_datasets import common


class Builder(common.JsonlSplitsBuilder):
    """Frame folders + captions."""

    name = "video_text_frames"
    KIND = "video_text"

    def _examples(self, root: Path, split: str):
        for rec in common.read_jsonl(root / f"{split}.jsonl"):
            frames = [common.read_bytes(p) for p in common.frame_files(root / "frames" / rec["video"])]
            yield rec["video"], {
                "id": rec["video"], "frames": frames, "fps": float(rec.get("fps", 1.0)), "text": rec.get("caption", "")
            }
