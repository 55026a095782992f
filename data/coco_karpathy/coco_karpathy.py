"""COCO captions with the Karpathy split (kind 'captions'), the paper's COCO benchmark.

Manual directory:
    dataset_coco.json             Karpathy's split file (images[].{filepath, filename, split, sentences[].raw})
    train2014/, val2014/          the COCO 2014 images (filepath names the folder)
Splits: train (train + restval: the few-shot support pool), val, test.
"""

from pathlib import Path

from flamingo_jax_datasets import common


class Builder(common.FileBuilder):
    """COCO Karpathy captions."""

    name = "coco_karpathy"
    KIND = "captions"
    SPLITS = ("train", "val", "test")

    def _examples(self, root: Path, split: str):
        return common.karpathy_captions(root, "dataset_coco.json", "", split)
