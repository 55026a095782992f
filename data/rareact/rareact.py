"""RareAct (kind 'video_retrieval': one annotated (clip, verb-noun class) row; scored by mWAP) from its files.

Manual directory:
    rareact.csv                 columns id, video_id, start, end, class_id, verb, noun, annotation (1 positive,
                                2 / 3 / 4 hard negatives: only the verb right / only the noun right / both right
                                but not applied to each other, 0 negative)
    frames/<video_id>/*.jpg     the whole video's frames extracted at frames_fps (the clip is [start, end) s)
    frames_fps.txt (optional)   the extraction rate (default 1)
Splits: test (the only one: RareAct is evaluated zero-shot). Rows keep the csv's order.
"""

from flamingo_jax_datasets import clips, common


class Builder(clips.ClipBuilder):
    """RareAct's annotated clips and their classes."""

    name = "rareact"
    KIND = "video_retrieval"
    OFFICIAL = {"test": "rareact.csv"}

    def _clips(self, root, official):
        for row in common.read_csv(root / official):
            yield str(row["id"]), clips.Clip(row["video_id"], float(row["start"]), float(row["end"])), {
                "video_id": row["video_id"], "class_id": int(row["class_id"]), "verb": row["verb"], "noun": row["noun"],
                "annotation": int(row["annotation"])
            }
