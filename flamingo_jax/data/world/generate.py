"""The generated Flamingo world's records: World.record(subset, split, index) draws any record on its own.

Record i of (subset, split) is drawn from np.random.default_rng([seed, subset_id, split_id, i]), so it
does not depend on how many records exist or on the order they are read: the world is a deterministic
random-access source (grain can read it directly, source.WorldSource) and the TFDS builder simply iterates it.
The subsets, their sizes and WorldConfig are in world_config.py; the text corpus's fact sentences in facts.py.

Few-shot prompts matter: VQA answers are one word, counts are digits (the training text spells
numbers out), knowledge answers are made-up words, so the answer format is learnt from the shots.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import numpy as np

from flamingo_jax.data.world import lexicon, render, scenes
from flamingo_jax.data.world.facts import FACT_QUESTIONS, fact_of, fact_quiz_line, fact_sentence, styled
from flamingo_jax.data.world.source import WorldSource, iter_world_text
from flamingo_jax.data.world.world_config import (DEFAULT_SIZES, EVAL_SUBSETS, EVAL_VIDEO_FPS, EVAL_VIDEO_SECONDS,
                                                  SUBSET_KINDS, TRAIN_SUBSETS, WorldConfig, world_config_from)

# Kept importable from here for the callers that read them as generate.X.
__all__ = [
    "DEFAULT_SIZES", "EVAL_SUBSETS", "EVAL_VIDEO_FPS", "EVAL_VIDEO_SECONDS", "FACT_QUESTIONS", "SUBSET_KINDS",
    "TRAIN_SUBSETS", "World", "WorldConfig", "WorldSource", "fact_of", "fact_quiz_line", "fact_sentence",
    "iter_world_text", "styled", "world_config_from"
]

# The ids of the subsets and splits in the records' random streams: fixed, so every record stays the same draw.
_SUBSET_IDS = {name: i + 1 for i, name in enumerate(SUBSET_KINDS)}
_SPLIT_IDS = {"train": 0, "test": 1}


@dataclasses.dataclass
class _MediaRng:
    """The random stream used only for pixels (so text does not depend on whether media is rendered)."""
    rng: np.random.Generator
    media: bool


class World:
    """A world instance: entities + record generators."""

    def __init__(self, config: WorldConfig = WorldConfig()):
        self.config = config
        self.entities = lexicon.make_entities(config.seed, config.n_entities)

    # -- helpers --------------------------------------------------------------------------------------
    def _rng(self, subset: str, split: str, index: int) -> np.random.Generator:
        return np.random.default_rng([self.config.seed, _SUBSET_IDS[subset], _SPLIT_IDS[split], index])

    def image(self, scene: scenes.Scene, rng: _MediaRng) -> bytes:
        if not rng.media:
            return b""
        return render.encode_png(
            render.render(list(scene.objs), scene.bg, self.config.image_size, self.entities, rng.rng))

    def clip_frames(self, clip: scenes.Clip, rng: _MediaRng, n: int | None = None) -> list[bytes]:
        """n frames (default video_frames) spanning the clip's whole motion."""
        if not rng.media:
            return []
        size, n = self.config.image_size, n or self.config.video_frames
        rng = rng.rng
        bg = render.background(clip.scene.bg, size, rng)  # static camera: one background per clip
        frames = []
        for f in range(n):
            s, off = scenes.clip_motion(clip, f / max(n - 1, 1))
            frames.append(
                render.encode_png(
                    render.render(list(clip.scene.objs), clip.scene.bg, size, self.entities, rng, scale=s, offsets=off,
                                  bg=bg)))
        return frames

    # -- records --------------------------------------------------------------------------------------
    def record(self, subset: str, split: str, index: int, media: bool = True) -> dict[str, Any]:
        """Record `index` of (subset, split) as plain Python values (PNG bytes for images).

        media=False skips rendering (images b'', frames []) and gives the same text: pixels are drawn from
        their own random stream, so the text corpus can be produced quickly for vocabulary training.
        """
        n = self.config.num_records(subset, split)
        if not 0 <= index < n:
            raise IndexError(f"{subset}/{split} has {n} records, asked for {index}")
        rng = self._rng(subset, split, index)
        mrng = _MediaRng(np.random.default_rng([self.config.seed, _SUBSET_IDS[subset], _SPLIT_IDS[split], index, 7]),
                         media)
        rec = getattr(self, f"_{subset}")(rng, mrng)
        rec["id"] = f"{subset}-{split}-{index}"
        return rec

    def _scene_pair(self, rng, mrng, text_fn) -> dict[str, Any]:
        scene = scenes.sample_scene(rng, self.config.n_entities)
        return {"image": self.image(scene, mrng), "text": text_fn(scene, self.entities, rng)}

    def _alt_text(self, rng, mrng):
        return self._scene_pair(rng, mrng, scenes.alt_text)

    def _long_text(self, rng, mrng):
        return self._scene_pair(rng, mrng, scenes.long_text)

    def _clip_pairs(self, rng, mrng):
        """The vision tower's contrastive pretraining pairs: an image and one reference caption, or, for a
        clip_names fraction, a text that only names its creatures. A full caption's colours and background tell an
        image from the rest of a contrastive batch, so an encoder trained on them alone never needs a creature's
        shape: a linear probe of creature kind on such a tower's features scored at chance (README, "In-context
        learning on the world"). Naming alone makes the shape the only clue."""

        def text(scene, entities, r):
            if self.config.clip_names > 0 and r.random() < self.config.clip_names:
                names = [entities[o.entity].name for o in scene.objs]
                return lexicon.join_list([f"{lexicon.article(n)} {n}" for n in names]) + "."
            return scenes.caption_refs(scene, entities, r, n=1)[0]

        return self._scene_pair(rng, mrng, text)

    def _episode_style(self, rec: dict[str, Any], rng, field: str,
                       refs_by_style: Callable[[], list[list[str]]]) -> dict[str, Any]:
        """With config.episode_styles, an evaluation record is one episode's query: it draws a style, its references
        (rec[field]) are that style's, and rec['styled'] holds one reference per style, which is what the record
        shows when it is a support example in another query's episode (evaluation.prompts.support_answer). The
        answer's format is then known only from the episode's shots, the paper's point about few-shot prompts
        carrying a benchmark's format (Section 3, Appendix A.2): a model that reads the shots' format gains from
        them, one that does not scores as if at 0 shots. Without it the record is unchanged (refs_by_style, which
        draws the other styles' references, is not called)."""
        if not self.config.episode_styles:
            return rec
        refs = refs_by_style()
        style = int(rng.integers(len(refs)))  # drawn after everything else: the scene is the same draw
        rec.update({field: refs[style], "style": style, "styled": [r[0] for r in refs]})
        return rec

    def _qa_styles(self, answer: str, n: int) -> list[list[str]]:
        """A QA answer's references per answer style (facts.styled: 'red', 'It is red.', 'The answer is red.')."""
        return [[styled(answer, s)] * n for s in range(3)]

    def _captions(self, rng, mrng):
        scene = scenes.sample_scene(rng, self.config.n_entities)
        refs = scenes.caption_refs(scene, self.entities, rng)
        rec = {"image": self.image(scene, mrng), "captions": refs}
        # caption styles: the COCO-like templates, or short alt-texts (the galleries' second style; not the long
        # descriptions, whose 32-shot prompts would run to 1200-1460 tokens)
        return self._episode_style(
            rec, rng, "captions",
            lambda: [refs, [scenes.alt_text(scene, self.entities, rng, noisy=False) for _ in refs]])

    def _vqa(self, rng, mrng):
        scene = scenes.sample_scene(rng, self.config.n_entities)
        q, a, qtype = self._visual_question(scene, rng)
        rec = {"image": self.image(scene, mrng), "question": q, "answers": [a] * 10, "question_type": qtype}
        return self._episode_style(rec, rng, "answers", lambda: self._qa_styles(a, 10))

    def _visual_question(self, scene, rng) -> tuple[str, str, str]:
        """(question, answer, type) about what a scene shows (VQAv2-like: colour, count, presence, place...)."""
        ents = self.entities
        o = scene.objs[int(rng.integers(len(scene.objs)))]
        name = ents[o.entity].name
        qtype = str(rng.choice(["colour", "count", "exists", "where", "background", "size"]))
        if qtype == "colour":
            q, a = f"What colour is the {name}?", o.colour
        elif qtype == "count":
            q, a = "How many objects are there?", str(len(scene.objs))
        elif qtype == "exists":
            present = {x.entity for x in scene.objs}
            if rng.random() < 0.5 and len(present) < len(ents):
                absent = [i for i in range(len(ents)) if i not in present]
                q, a = f"Is there a {ents[int(rng.choice(absent))].name}?", "no"
            else:
                q, a = f"Is there a {name}?", "yes"
        elif qtype == "where":
            q, a = f"Where is the {name}?", o.column
        elif qtype == "background":
            q, a = "What is the background?", scene.bg
        else:
            q, a = f"Is the {name} big or small?", ("big" if o.size == "big" else "small")
        return q, a, qtype

    def _knowledge_vqa(self, rng, mrng):
        scene = scenes.sample_scene(rng, self.config.n_entities, n_objects=int(rng.integers(1, 3)))
        target = int(rng.integers(len(scene.objs)))
        o = scene.objs[target]
        e = self.entities[o.entity]
        which = "this creature" if len(scene.objs) == 1 else f"the {o.colour} creature"
        qtype = str(rng.choice(["home", "food", "sound"]))
        q = {
            "home": f"Where does {which} live?", "food": f"What does {which} eat?",
            "sound": f"What sound does {which} make?"
        }[qtype]
        a = {"home": e.home, "food": e.food, "sound": e.sound}[qtype]
        rec = {"image": self.image(scene, mrng), "question": q, "answers": [a] * 10, "question_type": qtype}
        return self._episode_style(rec, rng, "answers", lambda: self._qa_styles(a, 10))

    def _clip(self, rng, mrng, evaluation: bool = True):
        clip = scenes.sample_clip(rng, self.config.n_entities)
        if not evaluation:
            return clip, {"frames": self.clip_frames(clip, mrng), "fps": float(self.config.video_fps)}
        n = int(round(EVAL_VIDEO_SECONDS * EVAL_VIDEO_FPS))
        return clip, {"frames": self.clip_frames(clip, mrng, n), "fps": EVAL_VIDEO_FPS}

    def _video_text(self, rng, mrng):
        clip, rec = self._clip(rng, mrng, evaluation=False)
        rec["text"] = scenes.clip_text(clip, self.entities, rng)
        return rec

    def _video_captions(self, rng, mrng):
        clip, rec = self._clip(rng, mrng)
        rec["captions"] = refs = scenes.clip_caption_refs(clip, self.entities, rng)
        # caption styles: the VATEX-like templates, or the VTP-like short description
        return self._episode_style(rec, rng, "captions",
                                   lambda: [refs, [scenes.clip_text(clip, self.entities, rng) for _ in refs]])

    def _video_qa(self, rng, mrng):
        clip, rec = self._clip(rng, mrng)
        o = clip.scene.objs[clip.actor]
        name = self.entities[o.entity].name
        moving = clip.action in ("left", "right", "up", "down")
        qtype = str(rng.choice(["action", "what", "colour", "count"]))
        if qtype == "action":
            q = f"Which way does the {name} move?" if moving else f"Does the {name} grow or shrink?"
            a = clip.action
        elif qtype == "what":
            q, a = ("What is moving?" if moving else "What is changing size?"), name
        elif qtype == "colour":
            q, a = f"What colour is the {name}?", o.colour
        else:
            q, a = "How many objects are there?", str(len(clip.scene.objs))
        rec.update(question=q, answers=[a], question_type=qtype)
        return self._episode_style(rec, rng, "answers", lambda: self._qa_styles(a, 1))

    def _creature_kind(self, rng, mrng):
        """One creature in a scene; label = its kind (an index into the world's entities, whose names are the
        class list): the ImageNet-style close-ended task, ranked over every kind's name."""
        scene = scenes.sample_scene(rng, self.config.n_entities, n_objects=1)
        return {"image": self.image(scene, mrng), "label": int(scene.objs[0].entity)}

    def _action_kind(self, rng, mrng):
        """An evaluation-length clip; label = its action (an index into lexicon.ACTIONS, whose phrases are the class
        list): the Kinetics-style close-ended task."""
        clip, rec = self._clip(rng, mrng)
        rec["label"] = list(lexicon.ACTIONS).index(clip.action)
        return rec

    def _interleaved(self, rng, mrng):
        """A page: text segments with images between them; the describing sentence comes before or after
        its image by a per-page convention, which is what the p_next choice of the phi rule is about."""
        cfg = self.config
        n_img = int(rng.integers(1, cfg.max_page_images + 1))
        u = rng.random()
        if u < cfg.quiz_pages + cfg.fact_pages:
            n_quiz = int(rng.integers(2, cfg.max_quiz_images + 1)) if cfg.max_quiz_images else n_img
            if u < cfg.quiz_pages:
                return self._quiz_page(rng, mrng, n_quiz)
            return self._fact_page(rng, mrng, n_quiz)
        before = rng.random() < 0.5
        items: list[tuple[str, Any]] = []
        focus = self.entities[int(rng.integers(len(self.entities)))]
        if rng.random() < 0.8:
            items.append(("text",
                          str(
                              rng.choice([
                                  f"My {focus.name} pictures.", "A walk with my camera.", f"All about {focus.plural}.",
                                  "Photos from my trip."
                              ]))))
        for _ in range(n_img):
            scene = scenes.sample_scene(rng, cfg.n_entities)
            sentence = scenes.image_sentence(scene, self.entities, rng)
            img = ("image", self.image(scene, mrng))
            items.extend([("text", sentence), img] if before else [img, ("text", sentence)])
            if rng.random() < 0.5:
                items.append(("text", str(rng.choice(scenes.FILLER)) if rng.random() < 0.5 else scenes.entity_filler(
                    focus.name, focus.plural, rng)))
        texts: list[str] = []
        images: list[bytes] = []
        positions: list[int] = []
        pending: list[str] = []
        for kind, value in items:
            if kind == "text":
                pending.append(value)
            else:
                if pending:
                    texts.append(" ".join(pending))
                    pending = []
                images.append(value)
                positions.append(len(texts))  # the image comes before texts[len(texts)]
        if pending:
            texts.append(" ".join(pending))
        return {"texts": texts, "images": images, "image_positions": positions}

    def _quiz_page(self, rng, mrng, n_img: int) -> dict[str, Any]:
        """A quiz page (each image followed by 'Question: ... Answer: ...') or a captioned gallery (each image
        followed by 'Output: <caption>'), as on real web pages. They carry the few-shot prompt layouts into the
        interleaved data: a 4-layer world LM does not pick an answer format up from the shots alone. Only
        visual questions: the knowledge questions' facts stay in the text corpus.

        With page_styles, each page answers in one style drawn for the page (a bare word, 'It is red.', 'The answer
        is red.') and a gallery captions in one (the evaluation's caption templates, alt-texts, long descriptions):
        what the next answer looks like is then only known from the page's earlier ones, the in-context pattern
        few-shot prompts rely on (the paper's shots carry each benchmark's answer format, Section 3 / Appendix A.2)."""
        gallery = rng.random() < 0.5
        style = int(rng.integers(3)) if self.config.page_styles else 0
        texts = [
            str(
                rng.choice(["Photo gallery.", "My captioned pictures."]
                           if gallery else ["Quiz time!", "Test yourself: look at each picture.", "Picture quiz."]))
        ]
        images, positions = [], []
        for _ in range(n_img):
            scene = scenes.sample_scene(rng, self.config.n_entities)
            if gallery:
                describe = (lambda *a: scenes.caption_refs(*a, n=1)[0], scenes.alt_text, scenes.long_text)[style]
                texts.append(f"Output: {describe(scene, self.entities, rng)}")
            else:
                q, a, _ = self._visual_question(scene, rng)
                texts.append(f"Question: {q} Answer: {styled(a, style)}")
            images.append(self.image(scene, mrng))
            positions.append(len(texts) - 1)  # the image comes right before its caption or question
        return {"texts": texts, "images": images, "image_positions": positions}

    def _text(self, rng, mrng):
        """A text-only document: the LM pretraining corpus, where every fact is stated.

        With text_sections > 1 a document runs to several sections, so the LM is pretrained on contexts as long as
        a 32-shot prompt: fact paragraphs, and fact quizzes ("Question: Where do daxes live? Answer: Varno.") whose
        questions are, more often than not, about creatures the same document described earlier, so that answering
        them is in-context recall over hundreds of tokens as well as memory."""
        mentioned: list[int] = []
        sentences = self._fact_paragraph(rng, mentioned)
        if self.config.text_sections > 1:
            # With page_styles a document answers its quizzes in one style drawn for it, as pages do: a frozen LM only
            # reads a format from its context if its pretraining text ever required that (Flamingo's in-context
            # abilities are the frozen LM's; the trained layers only read images).
            style = int(rng.integers(3)) if self.config.page_styles else 0
            for _ in range(int(rng.integers(max(1, self.config.text_sections // 2), self.config.text_sections + 1))):
                if rng.random() < 0.5:
                    sentences += self._fact_paragraph(rng, mentioned)
                else:
                    sentences += self._fact_quiz(rng, mentioned, style)
        return {"text": " ".join(sentences)}

    def _fact_paragraph(self, rng, mentioned: list[int]) -> list[str]:
        """4-9 sentences about random creatures: facts, looks, sightings, filler."""
        sentences = []
        for _ in range(int(rng.integers(4, 10))):
            k = int(rng.integers(len(self.entities)))
            e = self.entities[k]
            kind = rng.choice(["home", "food", "sound", "shape", "scene", "filler"], p=[.25, .2, .15, .15, .15, .1])
            if kind in ("home", "food", "sound"):
                mentioned.append(k)
            sentences.append(fact_sentence(e, str(kind), rng))
        return sentences

    def _fact_quiz(self, rng, mentioned: list[int], style: int = 0) -> list[str]:
        """3-8 'Question: ... Answer: ...' lines about creatures' facts (the knowledge questions' layout, with the
        creature named instead of shown); 70% ask about a creature the document has described before."""
        lines = [str(rng.choice(["Quiz time!", "Test what you know.", "Questions and answers.", "Do you remember?"]))]
        for _ in range(int(rng.integers(3, 9))):
            if mentioned and rng.random() < 0.7:
                k = int(rng.choice(mentioned))
            else:
                k = int(rng.integers(len(self.entities)))
            e = self.entities[k]
            qtype = str(rng.choice(["home", "food", "sound"]))
            q = str(rng.choice(FACT_QUESTIONS[qtype])).format(name=e.name, plural=e.plural)
            lines.append(fact_quiz_line(q, fact_of(e, qtype), style))
        return lines

    def _fact_page(self, rng, mrng, n_img: int) -> dict[str, Any]:
        """A page about 1-3 creature kinds: a paragraph states their facts by name, then pictures of them, each
        followed by a question about a fact in the knowledge questions' layout ('Question: Where does this
        creature live? Answer: Varno') or by a sentence restating it. The answer is in the page's own text (or
        in the LM's memory): the web-page analogue of reading an article and answering questions on it."""
        kinds = [int(k) for k in rng.choice(len(self.entities), int(rng.integers(1, 4)), replace=False)]
        intro = [str(rng.choice(["Creature facts.", "Did you know?", "My notes on the animals I met."]))]
        for k in kinds:
            for qtype in rng.permutation(["home", "food", "sound"])[:int(rng.integers(1, 4))]:
                intro.append(fact_sentence(self.entities[k], str(qtype), rng))
        texts, images, positions = [" ".join(intro)], [], []
        for _ in range(n_img):
            k = kinds[int(rng.integers(len(kinds)))]
            scene, target = self._scene_with(rng, k, n_objects=int(rng.integers(1, 3)))
            o = scene.objs[target]
            e = self.entities[k]
            qtype = str(rng.choice(["home", "food", "sound"]))
            if rng.random() < 0.75:
                which = "this creature" if len(scene.objs) == 1 else f"the {o.colour} creature"
                q = {
                    "home": f"Where does {which} live?", "food": f"What does {which} eat?",
                    "sound": f"What sound does {which} make?"
                }[qtype]
                texts.append(f"Question: {q} Answer: {fact_of(e, qtype)}")
            else:
                texts.append(f"This is a {e.name}. " + fact_sentence(e, qtype, rng))
            images.append(self.image(scene, mrng))
            positions.append(len(texts) - 1)
        return {"texts": texts, "images": images, "image_positions": positions}

    def _scene_with(self, rng, kind: int, n_objects: int) -> tuple[scenes.Scene, int]:
        """A scene with an object of `kind` (distinct kinds kept) and that object's index."""
        scene = scenes.sample_scene(rng, self.config.n_entities, n_objects=n_objects)
        present = [i for i, o in enumerate(scene.objs) if o.entity == kind]
        if present:
            return scene, present[0]
        target = int(rng.integers(len(scene.objs)))
        objs = list(scene.objs)
        objs[target] = dataclasses.replace(objs[target], entity=kind)
        return scenes.Scene(bg=scene.bg, objs=tuple(objs)), target
