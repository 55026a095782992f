"""Sampling world scenes and clips, and the sentences that describe them.

Every function takes an explicit np.random.Generator so a record is a pure function of its seed.
Text here never states an entity's facts (home, food, sound): those live only in the text corpus.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from flamingo_jax.data.world import lexicon
from flamingo_jax.data.world.render import Obj

# Object colours that would be hard to see on a background.
_CLASHES = {("white", "snow"), ("green", "grass"), ("yellow", "sand"), ("blue", "night"), ("purple", "night")}


@dataclasses.dataclass(frozen=True)
class Scene:
    bg: str
    objs: tuple[Obj, ...]  # sorted left to right


@dataclasses.dataclass(frozen=True)
class Clip:
    scene: Scene
    action: str  # key of lexicon.ACTIONS; objs[actor] is the one that acts
    actor: int


def _colour(rng: np.random.Generator, bg: str, avoid: set[str] = frozenset()) -> str:
    options = [c for c in lexicon.COLOURS if (c, bg) not in _CLASHES and c not in avoid]
    return str(rng.choice(options))


def sample_scene(rng: np.random.Generator, n_entities: int, n_objects: int | None = None) -> Scene:
    """1-3 objects of distinct kinds in distinct columns."""
    bg = str(rng.choice(list(lexicon.BACKGROUNDS)))
    n = int(rng.integers(1, 4)) if n_objects is None else n_objects
    n = min(n, n_entities, 3)
    cols = sorted(rng.choice(3, n, replace=False))
    kinds = rng.choice(n_entities, n, replace=False)
    objs = tuple(
        Obj(entity=int(k), colour=_colour(rng, bg), size=str(rng.choice(lexicon.SIZES)), column=lexicon.COLUMNS[c],
            cy=float(rng.uniform(0.3, 0.7)), angle=float(rng.uniform(-0.1, 0.1))) for k, c in zip(kinds, cols))
    return Scene(bg=bg, objs=objs)


def sample_clip(rng: np.random.Generator, n_entities: int) -> Clip:
    """A scene whose first object performs one action; placement keeps the motion inside the frame."""
    action = str(rng.choice(list(lexicon.ACTIONS)))
    bg = str(rng.choice(list(lexicon.BACKGROUNDS)))
    n = 1 if action in ("up", "down") else int(rng.integers(1, 3))
    n = min(n, n_entities)
    kinds = rng.choice(n_entities, n, replace=False)
    start_col = {"left": "right", "right": "left"}.get(action, "middle")
    actor_cy = 0.5 if n == 1 else 0.72
    actor = Obj(entity=int(kinds[0]), colour=_colour(rng, bg),
                size="small" if action in ("grows", "shrinks") else str(rng.choice(lexicon.SIZES)), column=start_col,
                cy=actor_cy, angle=float(rng.uniform(-0.08, 0.08)))
    objs = [actor]
    if n == 2:
        objs.append(
            Obj(entity=int(kinds[1]), colour=_colour(rng, bg, {actor.colour}), size="small",
                column=str(rng.choice(lexicon.COLUMNS)), cy=0.25, angle=float(rng.uniform(-0.08, 0.08))))
    return Clip(scene=Scene(bg=bg, objs=tuple(objs)), action=action, actor=0)


def clip_motion(clip: Clip, t: float) -> tuple[list[float], list[tuple[float, float]]]:
    """Per-object (scale, offset) at time t in [0, 1]."""
    scales, offsets = [], []
    for i, _ in enumerate(clip.scene.objs):
        s, off = 1.0, (0.0, 0.0)
        if i == clip.actor:
            d = 0.55 * t
            off = {"left": (-d, 0.0), "right": (d, 0.0), "up": (0.0, -0.6 * d),
                   "down": (0.0, 0.6 * d)}.get(clip.action, (0.0, 0.0))
            if clip.action == "grows":
                s = 0.8 + 1.4 * t
            elif clip.action == "shrinks":
                s = 2.2 - 1.4 * t
        scales.append(s)
        offsets.append(off)
    return scales, offsets


# ----------------------------------------------------------------------------------------------------
# Descriptions.


def phrase(o: Obj, entities, rng: np.random.Generator | None = None, with_size: bool = True) -> str:
    """'big red dax' (size sometimes omitted when rng is given)."""
    name = entities[o.entity].name
    if rng is not None and rng.random() < 0.3:
        with_size = False
    return f"{o.size} {o.colour} {name}" if with_size else f"{o.colour} {name}"


def _a(p: str) -> str:
    return f"{lexicon.article(p)} {p}"


def caption_refs(scene: Scene, entities, rng: np.random.Generator, n: int = 5) -> list[str]:
    """n reference captions in distinct templates (COCO-like: consensus wording with variation)."""
    ps = [_a(phrase(o, entities)) for o in scene.objs]
    lst = lexicon.join_list(ps)
    k = len(scene.objs)
    num = lexicon.NUMBER_WORDS[k]
    templates = [
        f"{lst} on {scene.bg}.",
        f'{num} object{"s" if k > 1 else ""} on a {scene.bg} background: {lst}.',
        f"a picture of {lst} on {scene.bg}.",
        (f"{lst}, from left to right, on {scene.bg}." if k > 1 else f"{ps[0]} alone on {scene.bg}."),
        f"there is {lst} on the {scene.bg}.",
        f"{lst} sitting on {scene.bg}.",
    ]
    order = rng.permutation(len(templates))[:n]
    return [templates[i] for i in order]


def alt_text(scene: Scene, entities, rng: np.random.Generator, noisy: bool = True) -> str:
    """Short ALIGN-like alt-text; when noisy, 10% carry no information at all (as on the web)."""
    o = scene.objs[int(rng.integers(len(scene.objs)))]
    name = entities[o.entity].name
    options = [
        f"{o.colour} {name}", f"{name} on {scene.bg}", f"photo of a {name}", f"my {name}",
        f"{o.colour} {name} {scene.bg} picture", f"{name} {o.size}"
    ]
    if noisy and rng.random() < 0.1:
        return f"IMG_{int(rng.integers(10000)):04d}"
    return str(rng.choice(options))


def long_text(scene: Scene, entities, rng: np.random.Generator) -> str:
    """LTIP-like multi-sentence description."""
    k = len(scene.objs)
    out = [
        f'This picture shows {lexicon.NUMBER_WORDS[k]} object{"s" if k > 1 else ""} on a {scene.bg} '
        f'background.'
    ]
    for o in scene.objs:
        where = "in the middle" if o.column == "middle" else f"on the {o.column}"
        out.append(f"{where.capitalize()} there is {_a(phrase(o, entities))}.")
    if k > 1 and rng.random() < 0.5:
        a, b = rng.choice(k, 2, replace=False)
        oa, ob = scene.objs[a], scene.objs[b]
        if lexicon.COLUMNS.index(oa.column) < lexicon.COLUMNS.index(ob.column):
            side = "left of"
        else:
            side = "right of"
        out.append(f"The {entities[oa.entity].name} is to the {side} the {entities[ob.entity].name}.")
    return " ".join(out)


def clip_phrases(clip: Clip, entities) -> tuple[str, str]:
    """(actor phrase, action phrase), e.g. ('red dax', 'moves to the left')."""
    o = clip.scene.objs[clip.actor]
    return f"{o.colour} {entities[o.entity].name}", lexicon.ACTIONS[clip.action]


def clip_caption_refs(clip: Clip, entities, rng: np.random.Generator, n: int = 5) -> list[str]:
    """VATEX-like references for a clip."""
    p, act = clip_phrases(clip, entities)
    bg = clip.scene.bg
    other = ""
    if len(clip.scene.objs) > 1:
        o2 = clip.scene.objs[1 - clip.actor]
        other = f' while {_a(o2.colour + " " + entities[o2.entity].name)} stays still'
    templates = [
        f"{_a(p)} {act} on {bg}{other}.",
        f"on the {bg}, {_a(p)} {act}{other}.",
        f"a video of {_a(p)} that {act}.",
        f"{_a(p)} {act} across the {bg} background.",
        f"we see {_a(p)}; it {act}.",
        f"the {p} {act}{other}.",
    ]
    order = rng.permutation(len(templates))[:n]
    return [templates[i] for i in order]


def clip_text(clip: Clip, entities, rng: np.random.Generator) -> str:
    """VTP-like single training description."""
    p, act = clip_phrases(clip, entities)
    return str(
        rng.choice([
            f"{_a(p)} {act}", f"video of {_a(p)} that {act} on {clip.scene.bg}", f"watch my {p}: it {act}!",
            f"{p} {act} on {clip.scene.bg}"
        ]))


FILLER = (
    "I took these pictures last week.",
    "What a nice day it was.",
    "Thanks for reading my page.",
    "More pictures will follow soon.",
    "This is one of my favourite photos.",
    "The light was perfect.",
    "Everyone in my family liked it.",
    "I will go back there next year.",
    "Let me know what you think.",
)


def entity_filler(name: str, plural: str, rng: np.random.Generator) -> str:
    """Sentences that mention an entity without revealing any of its facts."""
    return str(
        rng.choice([
            f"Have you ever seen a {name}?", f"My friend likes {plural} a lot.",
            f"{plural.capitalize()} are my favourite.", f"I want to draw a {name} one day.",
            f"There were many {plural} around."
        ]))


def image_sentence(scene: Scene, entities, rng: np.random.Generator) -> str:
    """A sentence on an interleaved page that describes the image next to it."""
    o = scene.objs[int(rng.integers(len(scene.objs)))]
    lst = lexicon.join_list([_a(phrase(x, entities)) for x in scene.objs])
    where = "in the middle" if o.column == "middle" else f"on the {o.column}"
    return str(
        rng.choice([
            f"Here is my {phrase(o, entities)} on the {scene.bg}.",
            f"This one shows {lst}.",
            f"Look at the {o.colour} {entities[o.entity].name} {where}!",
            f"I found {lst} on the {scene.bg}.",
            f"The {entities[o.entity].name} here is {o.colour}.",
        ]))
