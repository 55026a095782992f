"""RareAct (kind 'video_retrieval': one annotated (clip, verb-noun class) row; scored by mWAP) from its files.

Manual directory:
    rareact.csv                 columns id, video_id, start, end, class_id, verb, noun, annotation (1 positive,
                                2 / 3 / 4 hard negatives: only the verb right / only the noun right / both right
                                but not applied to each other, 0 negative)
    frames/<video_id>/*.jpg     the whole video's frames extracted at frames_fps (the clip is [start, end) s)
    frames_fps.txt (optional)   the extraction rate (default 1)
Splits: test (the only one: RareAct is evaluated zero-shot). Rows keep the csv's order.
"""

from pathlib import Path

from flamingo_jax_datasets import common


class Builder(common.FileBuilder):
    """RareAct's annotated clips and their classes."""

    name = "rareact"
    KIND = "video_retrieval"
    SPLITS = ("test", )

    def _examples(self, root: Path, split: str):
        fps = common.frames_fps(root)
        for row in common.read_csv(root / "rareact.csv"):
            key = str(row["id"])
            yield key, {
                "id": key, "frames": common.segment_frames(root / "frames" / row["video_id"], fps, float(row["start"]),
                                                           float(row["end"])), "fps": fps, "video_id": row["video_id"],
                "class_id": int(row["class_id"]), "verb": row["verb"], "noun": row["noun"],
                "annotation": int(row["annotation"])
            }
