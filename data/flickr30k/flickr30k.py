"""Flickr30k captions with the Karpathy split (kind 'captions').

Manual directory:
    dataset_flickr30k.json        Karpathy's split file (images[].{filename, split, sentences[].raw})
    flickr30k-images/<filename>   the images
Splits: train, val, test.
"""

from pathlib import Path

from flamingo_jax_datasets import common


class Builder(common.FileBuilder):
    """Flickr30k Karpathy captions."""

    name = "flickr30k"
    KIND = "captions"
    SPLITS = ("train", "val", "test")

    def _examples(self, root: Path, split: str):
        return common.karpathy_captions(root, "dataset_flickr30k.json", "flickr30k-images", split)
