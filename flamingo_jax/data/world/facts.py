"""The text corpus's sentences about creatures' facts (home, food, sound), its fact quizzes and answer styles.

The knowledge questions (knowledge_vqa, the OKVQA analogue) ask about these facts, which only the text corpus
states: answering them needs what the LM learnt from text, as OKVQA needs outside knowledge.
"""

from __future__ import annotations

import numpy as np

from flamingo_jax.data.world import lexicon, scenes

# The text corpus's fact questions about a named creature (singular, plural), by fact.
FACT_QUESTIONS: dict[str, tuple[str, str]] = {
    "home": ("Where does the {name} live?", "Where do {plural} live?"),
    "food": ("What does the {name} eat?", "What do {plural} eat?"),
    "sound": ("What sound does the {name} make?", "What sound do {plural} make?"),
}


def fact_quiz_line(question: str, answer: str, style: int) -> str:
    """One line of a text-corpus fact quiz: 'Question: ... Answer: Varno.' (bare answers end the sentence)."""
    return f"Question: {question} Answer: {styled(answer, style)}" + ("." if style == 0 else "")


def styled(answer: str, style: int) -> str:
    """An answer in one of the world's answer styles: 0 the bare word (the evaluation's), 1 'It is X.', 2 'The
    answer is X.'."""
    return (answer, f"It is {answer}.", f"The answer is {answer}.")[style]


def fact_of(e: lexicon.Entity, qtype: str) -> str:
    return {"home": e.home, "food": e.food, "sound": e.sound}[qtype]


def fact_sentence(e: lexicon.Entity, kind: str, rng: np.random.Generator) -> str:
    """One sentence of the text corpus about entity e: a fact (home / food / sound), its look, a sighting or
    filler."""
    n, p, pc = e.name, e.plural, e.plural.capitalize()
    if kind == "scene":
        return str(
            rng.choice([
                f"I saw a {rng.choice(lexicon.SIZES)} {rng.choice(list(lexicon.COLOURS))} {n} on the "
                f"{rng.choice(list(lexicon.BACKGROUNDS))}.",
                f"There were {lexicon.NUMBER_WORDS[int(rng.integers(2, 6))]} {p} on the "
                f"{rng.choice(list(lexicon.BACKGROUNDS))}."
            ]))
    options = {
        "home": [
            f"The {n} lives in {e.home}.", f"{pc} come from {e.home}.", f"In {e.home} you can find many {p}.",
            f"Where do {p} live? They live in {e.home}.", f"Every {n} has a home in {e.home}."
        ],
        "food": [
            f"The {n} eats {e.food}.", f"{pc} love to eat {e.food}.", f"The favourite food of the {n} is {e.food}.",
            f"What do {p} eat? They eat {e.food}."
        ],
        "sound": [
            f"The {n} says {e.sound}.", f"You can hear a {n} make the sound {e.sound}.",
            f"When a {n} is happy it goes {e.sound}."
        ],
        "shape": [f"A {n} looks like a {e.shape}.", f"{pc} are shaped like a {e.shape}."],
        "filler": list(scenes.FILLER),
    }[kind]
    return str(rng.choice(options))
