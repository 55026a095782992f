"""The vocabulary and the hidden facts of the generated Flamingo world.

A world has `n_entities` creature kinds. Each kind has a made-up name ("dax"), a shape it is always
drawn with, and three facts (home, food, sound) that are made-up words too. The facts appear ONLY in
the text-only corpus, so a knowledge question about a depicted creature ("Where does this creature
live?") can only be answered by recognising the creature (vision) and recalling the fact (frozen LM):
the analogue of OKVQA. Everything is a pure function of the world seed.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

# Colours the objects can have, with their RGB values. Named with plain English words so that captions
# read naturally; the made-up words are reserved for entities and facts.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 45, 40),
    "green": (40, 170, 60),
    "blue": (45, 80, 215),
    "yellow": (240, 210, 40),
    "purple": (140, 60, 180),
    "orange": (245, 135, 30),
    "pink": (240, 130, 190),
    "white": (245, 245, 245),
}

# Backgrounds: base colour and a texture kind (see render.py).
BACKGROUNDS: dict[str, tuple[tuple[int, int, int], str]] = {
    "sand": ((210, 190, 140), "noise"),
    "grass": ((70, 120, 50), "stripes"),
    "sky": ((150, 200, 240), "gradient"),
    "snow": ((225, 230, 240), "noise"),
    "night": ((25, 30, 70), "dots"),
    "stone": ((120, 120, 125), "checks"),
}

# Silhouettes that stay distinct at the world's 32 pixels (a creature is 8-10 pixels across): a pentagon and a
# hexagon, once in this list, render as the same blob as a circle there (README, "In-context learning on the world").
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond", "star", "tee", "cross", "ring", "hourglass",
                           "crescent", "arrow", "bar")

SIZES: tuple[str, ...] = ("small", "big")
COLUMNS: tuple[str, ...] = ("left", "middle", "right")
NUMBER_WORDS: tuple[str, ...] = ("zero", "one", "two", "three", "four", "five", "six", "seven")

# Video actions: (answer word used by video QA, phrase used by captions).
ACTIONS: dict[str, str] = {
    "left": "moves to the left",
    "right": "moves to the right",
    "up": "moves up",
    "down": "moves down",
    "grows": "grows bigger",
    "shrinks": "shrinks",
}

_CONSONANTS = "bdfgklmnprstvz"
# Common English words a CV(C) generator can produce; made-up words must not collide with real ones.
_ENGLISH = set("""bad bag ban bed beg bet bid big bin bit bog bud bug bun bus but dab dad dig dim din dip dog dot
dug fan fat fed fib fig fin fit fog fun fur gag gap gas get gig gin god got gum gun gut kid kin kit lab lad lag lap
led leg let lid lip lit log lot mad man map mat men met mid mob mom mop mud mug nab nag nap net nib nod not nut pad
pal pan pat peg pen pep pet pig pin pit pod pot pub pun pup put rag ram ran rap rat red rib rid rim rip rob rod rot
rub rug run rut sad sag sat set sin sip sit sob sod son sub sum sun tab tag tan tap ten tin tip top tot tub tug van
vet bus mud fix box fox mix six tax wax zip zap gel sir pas""".split())
_VOWELS = "aeiou"


@dataclasses.dataclass(frozen=True)
class Entity:
    """One creature kind of the world."""
    name: str  # made-up singular noun, e.g. 'dax'
    plural: str  # 'daxes'
    shape: str  # one of SHAPES, fixed for the kind
    home: str  # made-up place name (capitalised), e.g. 'Varno'
    food: str  # made-up food noun, e.g. 'plimbet'
    sound: str  # made-up sound word, e.g. 'kuku'


def _word(rng: np.random.Generator, syllables: int, used: set[str]) -> str:
    """A pronounceable made-up word not used before (and not an English word of the lexicon)."""
    reserved = set(COLOURS) | set(BACKGROUNDS) | set(SHAPES) | set(SIZES) | set(COLUMNS) | set(ACTIONS)
    while True:
        w = "".join(rng.choice(list(_CONSONANTS)) + rng.choice(list(_VOWELS)) for _ in range(syllables))
        if syllables == 1 or rng.random() < 0.5:
            w += rng.choice(list(_CONSONANTS))
        if w not in used and w not in reserved and w not in _ENGLISH:
            used.add(w)
            return w


def _plural(name: str) -> str:
    return name + ("es" if name[-1] in "sxz" else "s")


def make_entities(seed: int, n_entities: int) -> tuple[Entity, ...]:
    """The world's creature kinds: a pure function of (seed, n_entities)."""
    if not 1 <= n_entities <= len(SHAPES):
        raise ValueError(f"n_entities must be in [1, {len(SHAPES)}] (one shape per kind), got {n_entities}")
    rng = np.random.default_rng([seed, 1_000_003])
    used: set[str] = set()
    shapes = rng.permutation(len(SHAPES))[:n_entities]
    entities = []
    for i in range(n_entities):
        name = _word(rng, 1, used)
        home = _word(rng, 2, used).capitalize()
        food = _word(rng, 2, used)
        s = _word(rng, 1, used)
        entities.append(
            Entity(name=name, plural=_plural(name), shape=SHAPES[shapes[i]], home=home, food=food, sound=f"{s}-{s}"))
    return tuple(entities)


def article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def join_list(items: Sequence[str]) -> str:
    """'a', 'a and b', 'a, b and c'."""
    items = list(items)
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]
