"""Does a frozen LM read an answer format from its context? A text-only probe of the world's LMs.

    python -m flamingo_jax.tools.probe_lm_style --lm DIR [--lm DIR ...] --vocab SPM_MODEL [--prompts 30]

Flamingo's in-context abilities are its frozen LM's: the trained layers read images, copying a pattern from
earlier text is the LM's job. For each converted LM (flamingo_jax.convert's layout, e.g. what `reproduce`
pretrains into DIR/pretrained/lm), builds `--prompts` text prompts per answer style and example count k: k of
the world's fact questions answered in one style (world.styled: 0 the bare word, 1 'It is X.', 2 'The answer is
X.'), then one more question, and decodes the LM's answer greedily. A style is followed when the answer starts
with the style's whole prefix (' It is' / ' The answer is'), the bare word when its first token starts neither. Prints JSON {lm: {"k=K/style=S": share}}.
An LM that follows the examples' style from k=1 on can carry an answer format from the shots to the query; one
that answers in one style whatever the examples show cannot (README, "In-context learning on the world").
"""

from __future__ import annotations

import argparse
import json
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from flamingo_jax.data.world.generate import FACT_QUESTIONS, World, WorldConfig, fact_of, fact_quiz_line, styled

LENGTH = 512  # every prompt padded to one length: one compile per LM


def prompt_text(world: World, rng: np.random.Generator, k: int, style: int) -> str:
    """k answered fact questions in `style` (the world's text-corpus quiz lines), then an unanswered one."""

    def question() -> tuple[str, str]:
        e = world.entities[int(rng.integers(len(world.entities)))]
        kind = str(rng.choice(list(FACT_QUESTIONS)))
        return FACT_QUESTIONS[kind][0].format(name=e.name), fact_of(e, kind)

    lines = [fact_quiz_line(*question(), style) for _ in range(k)]
    return " ".join(lines + [f"Question: {question()[0]} Answer:"])


def style_prefixes(vocab) -> dict[int, list[int]]:
    """style -> the tokens every answer in that style starts with (' It is', ' The answer is')."""
    out = {}
    for s in (1, 2):
        a, b = vocab.encode(" " + styled("Varno", s)), vocab.encode(" " + styled("red", s))
        n = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
        out[s] = a[:n]
    return out


def followed(tokens: Sequence[int], style: int, prefixes: dict[int, list[int]]) -> bool:
    """Whether an answer's first tokens follow `style`: styles 1 and 2 their whole fixed prefix (an answer that
    starts 'The' and then names a creature does not follow 'The answer is X.'), the bare word a first token that
    starts neither prefix."""
    if style == 0:
        return all(tokens[0] != p[0] for p in prefixes.values())
    return list(tokens[:len(prefixes[style])]) == prefixes[style]


def style_shares(next_token, vocab, prompts: int, examples: Sequence[int], seed: int = 0) -> dict:
    """{"k=K/style=S": share of prompts whose greedy answer (next_token(ids) -> id, repeated) starts in style S}."""
    prefixes = style_prefixes(vocab)
    world, rng, res = World(WorldConfig(seed=seed)), np.random.default_rng(seed), {}

    def greedy(ids: list[int], n: int) -> list[int]:
        out: list[int] = []
        for _ in range(n):
            out.append(next_token(ids + out))
        return out

    for k in examples:
        for style in (0, 1, 2):
            n = len(prefixes[style]) if style else 1
            hits = sum(
                followed(greedy([vocab.bos_id] + vocab.encode(prompt_text(world, rng, k, style)), n), style, prefixes)
                for _ in range(prompts))
            res[f"k={k}/style={style}"] = round(hits / prompts, 3)
    return res


def probe(lm_dirs: Sequence[str], vocab_path: str, prompts: int = 30, examples: Sequence[int] = (0, 1, 4, 8),
          seed: int = 0) -> dict:
    from flamingo_jax.convert.store import load_converted
    from flamingo_jax.data.vocab import SentencePieceVocab
    from flamingo_jax.models.lm import DecoderLM

    out = {}
    for path in lm_dirs:
        params, cfg = load_converted(path)
        vocab = SentencePieceVocab(vocab_path, int(cfg.vocab_size))
        lm = DecoderLM(cfg)
        logits = jax.jit(lambda p, t, m: lm.apply({"params": p}, t, m)[0])

        def next_token(ids: list[int]) -> int:
            tokens = np.full((1, LENGTH), vocab.pad_id, np.int32)
            tokens[0, :len(ids)] = ids
            row = np.asarray(logits(params, jnp.asarray(tokens), jnp.asarray(tokens != vocab.pad_id)))
            return int(np.argmax(row[0, len(ids) - 1, :vocab.base_size]))

        out[path] = style_shares(next_token, vocab, prompts, examples, seed)
    return out


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lm", action="append", required=True, help="converted LM directory")
    ap.add_argument("--vocab", required=True, help="the SentencePiece model the LMs were pretrained with")
    ap.add_argument("--prompts", type=int, default=30, help="prompts per (examples, style)")
    ap.add_argument("--examples", default="0,1,4,8", help="answered examples before the question")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    print(json.dumps(probe(a.lm, a.vocab, a.prompts, [int(k) for k in a.examples.split(",")], a.seed), indent=1))


if __name__ == "__main__":
    main()
