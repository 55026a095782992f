"""TextVQA (kind 'vqa') from the official files.

Manual directory:
    TextVQA_0.5.1_{train,val}.json   {"data": [{"question_id", "question", "image_id", "answers": [...]}]}
    train_images/<image_id>.jpg      the images (val images are in train_images/ too, as released)
Splits: train (support pool), validation.
"""

from flamingo_jax_datasets import vqa


class Builder(vqa.VqaBuilder):
    """TextVQA questions, answers and images."""

    name = "textvqa"
    LAYOUT = vqa.VqaLayout("TextVQA_0.5.1_{s}.json", lambda s, rec: f"train_images/{rec['image_id']}.jpg",
                           records_key="data", type_fields=())
