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
    prefix = probe_lm_style.style_prefixes(vocab)
    assert vocab.decode(prefix[2], markers=False).strip() == "The answer is"

    def one_style(ids):  # always a bare answer
        return bare_first

    def copier(ids, whole=True):
        """Answers in the style of the prompt's first answered example (bare when there is none); whole=False
        writes only the prefix's first word and then a name, as a model that starts 'The' and names a creature."""
        text = vocab.decode(ids, markers=False)
        m = re.search(r"Answer: (It is|The answer is)?", text)
        if m is None or not text.count("Answer:") > 1:
            return bare_first
        want = prefix[1] if m.group(1) == "It is" else prefix[2] if m.group(1) else []
        after = text[text.rindex("Answer:") + len("Answer:"):]  # what the LM has answered so far
        done = len(vocab.encode(after)) if after.strip() else 0
        return want[done] if done < (len(want) if whole else min(1, len(want))) else bare_first

    plain = probe_lm_style.style_shares(one_style, vocab, prompts=6, examples=(0, 4))
    assert plain == {
        "k=0/style=0": 1.0, "k=0/style=1": 0.0, "k=0/style=2": 0.0, "k=4/style=0": 1.0, "k=4/style=1": 0.0,
        "k=4/style=2": 0.0
    }
    copying = probe_lm_style.style_shares(copier, vocab, prompts=6, examples=(0, 4))
    assert copying["k=4/style=0"] == copying["k=4/style=1"] == copying["k=4/style=2"] == 1.0, copying
    assert copying["k=0/style=1"] == 0.0  # no example: nothing to copy
    first_word = probe_lm_style.style_shares(lambda ids: copier(ids, whole=False), vocab, prompts=6, examples=(4, ))
    assert first_word["k=4/style=2"] == 0.0, first_word  # 'The vit.' is not 'The answer is vit.'


def test_prompts_answer_every_example_in_the_style_and_end_with_a_question():
    import numpy as np

    world, rng = World(WorldConfig()), np.random.default_rng(0)
    for style, start in ((1, "It is "), (2, "The answer is ")):
        text = probe_lm_style.prompt_text(world, rng, 3, style)
        answers = re.findall(r"Answer: ([^?]+?)(?= Question:|$)", text)
        assert len(answers) == 3 and all(a.startswith(start) for a in answers) and text.endswith("Answer:"), text
