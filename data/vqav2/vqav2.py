"""VQAv2 (kind 'vqa') from the official files.

Manual directory:
    v2_OpenEnded_mscoco_{train,val}2014_questions.json
    v2_mscoco_{train,val}2014_annotations.json
    {train,val}2014/COCO_{train,val}2014_<image_id:012d>.jpg
Splits: train (the few-shot support pool), validation (the paper reports on val).
answers: the 10 human answers; question_type: the annotation's answer_type (yes/no, number, other).
"""

from flamingo_jax_datasets import vqa


class Builder(vqa.VqaBuilder):
    """VQAv2 questions, answers and COCO images."""

    name = "vqav2"
    LAYOUT = vqa.coco_layout("v2_OpenEnded_mscoco_{s}2014_questions.json", "v2_mscoco_{s}2014_annotations.json")
