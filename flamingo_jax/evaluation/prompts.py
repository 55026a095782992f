"""Few-shot prompts as in the paper (spec section 4), built as token ids.

    captions, video_captions   <image>Output: {caption}<EOC>
    vqa, video_qa              <image>Question: {question} Answer: {answer}<EOC>
    classification (memes)     <image>is an image with written: "{text}" on it. Is it hateful? Answer: {yes|no}<EOC>

A prompt is <BOS>, the support examples in order, then the query (its media and the text up to the answer,
e.g. `<image>Output:`), the layout the model was trained on (flamingo_jax.data.tokens: interleaved
documents are <BOS>text<EOC><image>text<EOC>...). A video is one media (one `<image>` token).
Zero-shot prompts carry two text-only examples (no `<image>`, no media) before the query.

Support examples are drawn from the support split (train) at random in random order, per query from
rng(seed, query index) so that sharding never changes a prompt; RICES (rices.py) picks them by similarity.
The answer shown for a support example: a caption drawn at random from its references, the most frequent
VQA answer (ties: the first), or the label as yes/no.
"""

from __future__ import annotations

import collections
import dataclasses
from typing import Any, Mapping, Sequence

import numpy as np

CAPTION_KINDS = ("captions", "video_captions")
QA_KINDS = ("vqa", "video_qa")
CLASSIFICATION_KINDS = ("classification",)
CLASS_NAMES = ("no", "yes")  # label 0 / 1


def query_text(kind: str, record: Mapping[str, Any]) -> str:
    """The text after the query's `<image>`, up to where the model answers."""
    if kind in CAPTION_KINDS:
        return "Output:"
    if kind in QA_KINDS:
        return f"Question: {record['question']} Answer:"
    if kind in CLASSIFICATION_KINDS:
        return f'is an image with written: "{record["text"]}" on it. Is it hateful? Answer:'
    raise ValueError(f"no prompt for eval-set kind {kind!r}")


def support_answer(kind: str, record: Mapping[str, Any], rng: np.random.Generator) -> str:
    if kind in CAPTION_KINDS:
        caps = record["captions"]
        return caps[int(rng.integers(len(caps)))]
    if kind in QA_KINDS:
        return collections.Counter(record["answers"]).most_common(1)[0][0]
    if kind in CLASSIFICATION_KINDS:
        return CLASS_NAMES[int(record["label"])]
    raise ValueError(f"no prompt for eval-set kind {kind!r}")


def example_text(kind: str, record: Mapping[str, Any], rng: np.random.Generator) -> str:
    """A support example's text after its `<image>` (without the trailing `<EOC>`)."""
    return f"{query_text(kind, record)} {support_answer(kind, record, rng)}"


def random_support(pool_size: int, shots: int, seed: int, query_index: int) -> list[int]:
    """`shots` distinct support indices in random order, a function of (seed, query index) only."""
    if shots > pool_size:
        raise ValueError(f"{shots} shots need a support pool of at least {shots} examples, it has {pool_size}: "
                         "use fewer shots or a larger eval set (config.data.world.scale)")
    rng = np.random.default_rng([seed, query_index, 1])
    return [int(i) for i in rng.choice(pool_size, size=shots, replace=False)]


@dataclasses.dataclass
class Prompt:
    """tokens: the prompt's ids; support: the support-pool indices whose media precede the query's, in
    prompt order (empty for zero-shot); text_only: those shown without media (zero-shot)."""

    tokens: list[int]
    support: list[int]           # support-pool indices whose media appear, in prompt order
    text_only: list[int]         # support-pool indices used as text-only examples (zero-shot)


def build_prompt(vocab, kind: str, support_records: Sequence[Mapping[str, Any]], support_ids: Sequence[int],
                 query: Mapping[str, Any], *, text_only: bool, seed: int, query_index: int) -> Prompt:
    """Token ids of one prompt. text_only: the support examples are shown without media (zero-shot)."""
    rng = np.random.default_rng([seed, query_index, 2])  # which caption a support example shows
    ids = [vocab.bos_id]
    for rec in support_records:
        if not text_only:
            ids.append(vocab.image_id)
        ids += vocab.encode(example_text(kind, rec, rng))
        ids.append(vocab.eoc_id)
    ids.append(vocab.image_id)
    ids += vocab.encode(query_text(kind, query))
    support = [] if text_only else list(support_ids)
    return Prompt(tokens=ids, support=support, text_only=list(support_ids) if text_only else [])


def candidate_tokens(vocab, kind: str) -> list[list[int]]:
    """Close-ended candidates as they follow `Answer:` (a space, the class name, `<EOC>`)."""
    if kind not in CLASSIFICATION_KINDS:
        raise ValueError(f"{kind!r} is open-ended")
    return [vocab.encode(" " + name) + [vocab.eoc_id] for name in CLASS_NAMES]


def postprocess(kind: str, text: str) -> str:
    """Generated text -> the prediction scored (as OpenFlamingo: cut at a new prompt field, strip)."""
    for marker in ("<EOC>", "<image>", "Question:", "Answer:", "Output:"):
        text = text.split(marker, 1)[0]
    text = text.strip()
    if kind in CAPTION_KINDS:
        text = text.replace('"', "")
    return text
