"""flamingo_jax.tools.probe_lm_style: it tells an LM that copies the examples' answer style from one that
answers in one style whatever the context shows."""

import re

from flamingo_jax.data.vocab import SentencePieceVocab, train_sentencepiece
from flamingo_jax.data.world.generate import World, WorldConfig
from flamingo_jax.tools import probe_lm_style


def _vocab():
    world = World(WorldConfig(scale=0.02, text_sections=4, page_styles=True))
    texts = [world.record("text", "train", i, media=False)["text"] for i in range(40)]
    return SentencePieceVocab(train_sentencepiece(texts, 300))


def test_shares_separate_a_copying_lm_from_a_one_style_lm():
    vocab = _vocab()
    bare_first = vocab.encode(" Varno")[0]
    first = {1: vocab.encode(" It is")[0], 2: vocab.encode(" The answer")[0]}

    def one_style(ids):  # always a bare answer
        return bare_first

    def copier(ids):  # answers in the style of the prompt's first answered example (bare when there is none)
        text = vocab.decode(ids, markers=False)
        m = re.search(r"Answer: (It is|The answer is)?", text)
        if m is None or not text.count("Answer:") > 1:
            return bare_first
        return first[1] if m.group(1) == "It is" else first[2] if m.group(1) else bare_first

    plain = probe_lm_style.style_shares(one_style, vocab, prompts=6, examples=(0, 4))
    assert plain == {
        "k=0/style=0": 1.0, "k=0/style=1": 0.0, "k=0/style=2": 0.0, "k=4/style=0": 1.0, "k=4/style=1": 0.0,
        "k=4/style=2": 0.0
    }
    copying = probe_lm_style.style_shares(copier, vocab, prompts=6, examples=(0, 4))
    assert copying["k=4/style=0"] == copying["k=4/style=1"] == copying["k=4/style=2"] == 1.0, copying
    assert copying["k=0/style=1"] == 0.0  # no example: nothing to copy


def test_prompts_answer_every_example_in_the_style_and_end_with_a_question():
    import numpy as np

    world, rng = World(WorldConfig()), np.random.default_rng(0)
    for style, start in ((1, "It is "), (2, "The answer is ")):
        text = probe_lm_style.prompt_text(world, rng, 3, style)
        answers = re.findall(r"Answer: ([^?]+?)(?= Question:|$)", text)
        assert len(answers) == 3 and all(a.startswith(start) for a in answers) and text.endswith("Answer:"), text
