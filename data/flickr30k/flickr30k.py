"""Flickr30k captions with the Karpathy split (kind 'captions').

Manual directory:
    dataset_flickr30k.json        Karpathy's split file (images[].{filename, split, sentences[].raw})
    flickr30k-images/<filename>   the images
Splits: train, val, test.
"""

from flamingo_jax_datasets import common


class Builder(common.KarpathyBuilder):
    """Flickr30k Karpathy captions."""

    name = "flickr30k"
    JSON_FILE, IMAGE_DIR = "dataset_flickr30k.json", "flickr30k-images"
