"""Few-shot prompts as in the paper (Section 2.5: interleaved support examples, then the query), built as token ids.

    captions, video_captions   <image>Output: {caption}<EOC>
    vqa, video_qa              <image>Question: {question} Answer: {answer}<EOC>
    classification (memes)     <image>is an image with written: "{text}" on it. Is it hateful? Answer: {yes|no}<EOC>
    image_classification,      <image>Output: {class name}<EOC>        (ImageNet / Kinetics style: every class
    video_classification,      name is a candidate; RareAct's class name is "{verb} {noun}")
    video_retrieval
    dialog (VisDial)           <image>Caption: {caption}. Question: {q1} Answer: {a1}. ... Question: {q} Answer: {option}<EOC>
    video_choice (STAR)        <image>Question: {question} Answer: {option}<EOC>

A prompt is <BOS>, the support examples in order, then the query (its media and the text up to the answer,
e.g. `<image>Output:`), the layout the model was trained on (flamingo_jax.data.tokens: interleaved
documents are <BOS>text<EOC><image>text<EOC>...). A video is one media (one `<image>` token).
Zero-shot prompts of OPEN-ENDED tasks carry two text-only examples (no `<image>`, no media) before the query;
close-ended zero-shot prompts carry none (the paper adds them only for open-ended tasks, Appendix A.2).
Close-ended tasks rank candidate continuations (a space, the candidate, `<EOC>`) by log-likelihood; prompt
ensembling (Appendix A.2) averages them over permutations of the shots (shot_orders).

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
CLASSIFICATION_KINDS = ("classification", )
CLASS_NAMES = ("no", "yes")  # label 0 / 1
CLASS_LIST_KINDS = ("image_classification", "video_classification", "video_retrieval"
                    )  # ranked over the eval set's class names
OPTION_KINDS = ("dialog", "video_choice")  # ranked over each record's own options
CLOSE_ENDED_KINDS = CLASSIFICATION_KINDS + CLASS_LIST_KINDS + OPTION_KINDS


def _question(q: str) -> str:
    return q if q.rstrip().endswith("?") else q.rstrip() + "?"


def query_text(kind: str, record: Mapping[str, Any]) -> str:
    """The text after the query's `<image>`, up to where the model answers."""
    if kind in CAPTION_KINDS:
        return "Output:"
    if kind in QA_KINDS or kind == "video_choice":
        return f"Question: {record['question']} Answer:"
    if kind in CLASSIFICATION_KINDS:
        return f'is an image with written: "{record["text"]}" on it. Is it hateful? Answer:'
    if kind in CLASS_LIST_KINDS:
        return "Output:"
    if kind == "dialog":
        history = "".join(f"Question: {_question(q)} Answer: {a}. "
                          for q, a in zip(record["history_questions"], record["history_answers"]))
        return f"Caption: {record['caption']}. {history}Question: {_question(record['question'])} Answer:"
    raise ValueError(f"no prompt for eval-set kind {kind!r}")


def class_name(kind: str, record: Mapping[str, Any], classes: Sequence[str] | None = None) -> str:
    """The name a class-list record is shown with as a support example."""
    if kind == "video_retrieval":
        return f"{record['verb']} {record['noun']}"
    if classes is None:
        raise ValueError(f"{kind!r} support examples need the class names")
    return classes[int(record["label"])]


def support_answer(kind: str, record: Mapping[str, Any], rng: np.random.Generator, classes: Sequence[str] | None = None,
                   style: int | None = None) -> str:
    """The answer a support record shows; style: the episode's (its query's `style`, a world with episode_styles),
    shown from the record's one reference per style."""
    if style is not None:
        if "styled" not in record:
            raise ValueError(f"a query with an answer style (style={style}) needs support records with 'styled' "
                             "references: both come from a world with episode_styles")
        return record["styled"][style]
    if kind in CAPTION_KINDS:
        caps = record["captions"]
        return caps[int(rng.integers(len(caps)))]
    if kind in QA_KINDS:
        return collections.Counter(record["answers"]).most_common(1)[0][0]
    if kind in CLASSIFICATION_KINDS:
        return CLASS_NAMES[int(record["label"])]
    if kind in CLASS_LIST_KINDS:
        return class_name(kind, record, classes)
    if kind in OPTION_KINDS:
        return record["options"][int(record["answer_index"])]
    raise ValueError(f"no prompt for eval-set kind {kind!r}")


def example_text(kind: str, record: Mapping[str, Any], rng: np.random.Generator, classes: Sequence[str] | None = None,
                 style: int | None = None) -> str:
    """A support example's text after its `<image>` (without the trailing `<EOC>`), in the episode's style."""
    return f"{query_text(kind, record)} {support_answer(kind, record, rng, classes, style)}"


def text_only_shots(kind: str, shots: int) -> int:
    """Text-only examples of a zero-shot prompt: two for open-ended tasks, none for close-ended ones."""
    return 2 if shots == 0 and kind not in CLOSE_ENDED_KINDS else 0


def shot_orders(shots: int, k: int, seed: int, query_index: int) -> list[list[int]]:
    """k orders of a prompt's shots for prompt ensembling: the drawn order first, then k - 1 random
    permutations, a function of (seed, query index) only."""
    rng = np.random.default_rng([seed, query_index, 3])
    return [list(range(shots))] + [[int(i) for i in rng.permutation(shots)] for _ in range(k - 1)]


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
    support: list[int]  # support-pool indices whose media appear, in prompt order
    text_only: list[int]  # support-pool indices used as text-only examples (zero-shot)


def build_prompt(vocab, kind: str, support_records: Sequence[Mapping[str, Any]], support_ids: Sequence[int],
                 query: Mapping[str, Any], *, text_only: bool, seed: int, query_index: int,
                 classes: Sequence[str] | None = None) -> Prompt:
    """Token ids of one prompt. text_only: the support examples are shown without media (zero-shot)."""
    rng = np.random.default_rng([seed, query_index, 2])  # which caption a support example shows
    ids = [vocab.bos_id]
    for rec in support_records:
        if not text_only:
            ids.append(vocab.image_id)
        ids += vocab.encode(example_text(kind, rec, rng, classes, query.get("style")))
        ids.append(vocab.eoc_id)
    ids.append(vocab.image_id)
    ids += vocab.encode(query_text(kind, query))
    support = [] if text_only else list(support_ids)
    return Prompt(tokens=ids, support=support, text_only=list(support_ids) if text_only else [])


def candidate_tokens(vocab, kind: str, names: Sequence[str] | None = None) -> list[list[int]]:
    """Close-ended candidates as they follow the query text (a space, the candidate, `<EOC>`): yes/no for
    classification, else `names` (the class list, or a record's options)."""
    if kind not in CLOSE_ENDED_KINDS:
        raise ValueError(f"{kind!r} is open-ended")
    if names is None:
        if kind not in CLASSIFICATION_KINDS:
            raise ValueError(f"{kind!r} candidates need the class names or options")
        names = CLASS_NAMES
    return [vocab.encode(" " + name) + [vocab.eoc_id] for name in names]


def postprocess(kind: str, text: str) -> str:
    """Generated text -> the prediction scored (as OpenFlamingo: cut at a new prompt field, strip)."""
    for marker in ("<EOC>", "<image>", "Question:", "Answer:", "Output:"):
        text = text.split(marker, 1)[0]
    text = text.strip()
    if kind in CAPTION_KINDS:
        text = text.replace('"', "")
    return text
