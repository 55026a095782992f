"""COCO captions with the Karpathy split (kind 'captions'), the paper's COCO benchmark.

Manual directory:
    dataset_coco.json             Karpathy's split file (images[].{filepath, filename, split, sentences[].raw})
    train2014/, val2014/          the COCO 2014 images (filepath names the folder)
Splits: train (train + restval: the few-shot support pool), val, test.
"""

from flamingo_jax_datasets import common


class Builder(common.KarpathyBuilder):
    """COCO Karpathy captions."""

    name = "coco_karpathy"
    JSON_FILE = "dataset_coco.json"
