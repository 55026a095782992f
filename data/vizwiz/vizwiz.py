"""VizWiz VQA (kind 'vqa') from the official files.

Manual directory:
    Annotations/{train,val}.json   lists of {"image", "question", "answers": [{"answer", ...}], "answer_type"}
    {train,val}/<image>            the images
Splits: train (support pool), validation.
"""

from flamingo_jax_datasets import vqa


class Builder(vqa.VqaBuilder):
    """VizWiz questions, answers and images."""

    name = "vizwiz"
    LAYOUT = vqa.VqaLayout("Annotations/{s}.json", lambda s, rec: f"{s}/{rec['image']}", key="image")
