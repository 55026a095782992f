"""OK-VQA (kind 'vqa') from the official files (same format as VQAv2).

Manual directory:
    OpenEnded_mscoco_{train,val}2014_questions.json
    mscoco_{train,val}2014_annotations.json
    {train,val}2014/COCO_{train,val}2014_<image_id:012d>.jpg
Splits: train (support pool), validation.
"""

from flamingo_jax_datasets import vqa


class Builder(vqa.VqaBuilder):
    """OK-VQA questions, answers and COCO images."""

    name = "okvqa"
    LAYOUT = vqa.coco_layout("OpenEnded_mscoco_{s}2014_questions.json", "mscoco_{s}2014_annotations.json")
