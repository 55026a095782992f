"""The COCO caption toolkit's tokenisation, in Python (no Java).

pycocoevalcap's PTBTokenizer runs Stanford CoreNLP 3.4.1's PTBTokenizer (`-preserveLines -lowerCase`) and then
drops the tokens in PUNCTUATIONS. This module reproduces that observable behaviour for English text:

  - lowercasing (CoreNLP lowercases every token, including its bracket escapes: `(` -> `-lrb-`, which the
    toolkit's upper-case PUNCTUATIONS list then fails to remove, so brackets survive as `-lrb-`/`-rrb-`,
    `-lsb-`/`-rsb-`, `-lcb-`/`-rcb-`);
  - punctuation split off words: `. , ; : ? ! ...` (runs of `!`/`?` stay one token, e.g. `?!`), except commas
    and colons between digits (`1,000`, `10:30`) and periods inside numbers (`3.5`), abbreviations (`mr.`,
    `etc.`), single letters (`a.`) and acronyms (`u.s.a.`);
  - quotes become separate tokens (then removed); hyphens inside words stay (`fir-fir`), a hyphen at a word
    edge is split off (then removed);
  - clitics: `'s 'm 'd 're 've 'll n't` split (`isn't` -> `is n't`), `cannot` -> `can not`,
    `gonna/wanna/gotta` -> `gon na/wan na/got ta`, `'tis` -> `'t is`;
  - symbols `& % $ + = < > * ~ ^ | \\` split into their own tokens; `/`, `#tag`, `@user`, URLs and e-mail
    addresses stay whole.

Known differences (rare in captions; documented rather than emulated): CoreNLP's full abbreviation list (we
carry the common ones), its handling of emoticons, SGML tags, phone numbers, fractions such as `1 1/2`,
Unicode quote/dash normalisation and non-breaking spaces. tests/test_eval_metrics.py checks equality with
the Java tokenizer on a procedurally generated fixture that exercises every rule above.
"""

from __future__ import annotations

import re

# Removed after tokenisation by pycocoevalcap (tokenizer/ptbtokenizer.py). Upper-case escapes never match.
PUNCTUATIONS = frozenset(
    ["''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-", "--", "...", ";"])

_BRACKETS = {"(": "-lrb-", ")": "-rrb-", "[": "-lsb-", "]": "-rsb-", "{": "-lcb-", "}": "-rcb-"}
_SYMBOLS = set("&%$+=<>*~^|\\")
_ABBREVIATIONS = frozenset("""
mr mrs ms dr prof sr jr st mt ft inc ltd co corp etc vs no jan feb mar apr jun jul aug sep sept oct nov dec
mon tue wed thu fri sat sun gen col lt sgt capt rev gov sen rep est dept univ ave blvd rd approx fig al
""".split())
_SPECIAL_WORDS = {
    "cannot": ["can", "not"], "gonna": ["gon", "na"], "wanna": ["wan", "na"], "gotta": ["got", "ta"],
    "gimme": ["gim", "me"], "lemme": ["lem", "me"], "'tis": ["'t", "is"], "'twas": ["'t", "was"],
    "y'all": ["y'", "all"], "rock'n'roll": ["rock", "'n'", "roll"]
}
_CLITIC = re.compile(r"^(.*[a-z])(n't|'s|'m|'d|'re|'ve|'ll)$")
_URL = re.compile(r"^(https?://\S+|www\.\S+|[\w.+-]+@[\w-]+\.[\w.-]+)$")
_ACRONYM = re.compile(r"^([a-z]\.)+[a-z]?\.?$|^[a-z]\.$")
_NUMBER = re.compile(r"^[0-9][0-9.,:/]*[0-9]$|^[0-9]$")
_PUNCT_RUN = re.compile(r"(\.\.\.+|[!?]+|--+|[.,;:])$")


def _split_core(core: str) -> list[str]:
    """A chunk without leading/trailing quotes or brackets -> tokens (before punctuation removal)."""
    if not core:
        return []
    if _URL.match(core):
        return [core]
    if core in _SPECIAL_WORDS:
        return list(_SPECIAL_WORDS[core])
    out: list[str] = []
    # Internal separators: brackets, symbols, quotes, and , ; : ! ? not between digits.
    for i, ch in enumerate(core):
        if ch in _BRACKETS or ch in _SYMBOLS or ch == '"':
            left, right = core[:i], core[i + 1:]
            token = _BRACKETS.get(ch, "``" if ch == '"' else ch)
            return _split_core(left) + [token] + _split_core(right)
        if ch in ",;:!?" and 0 < i < len(core) - 1:
            between_digits = core[i - 1].isdigit() and core[i + 1].isdigit()
            if ch in ";!?" or not between_digits:
                j = i
                while j + 1 < len(core) and core[j + 1] in "!?" and ch in "!?":
                    j += 1
                return _split_core(core[:i]) + [core[i:j + 1]] + _split_core(core[j + 1:])
    # Trailing punctuation runs (periods only when not part of an abbreviation / acronym / number).
    m = _PUNCT_RUN.search(core)
    if m and m.start() > 0:
        word, punct = core[:m.start()], m.group(0)
        if punct == "." and (_ACRONYM.match(core) or word in _ABBREVIATIONS):
            return [core]
        return _split_core(word) + [punct]
    if m and m.start() == 0:
        return [core]
    if core.startswith("-") and len(core) > 1 and not core.startswith("--"):
        return ["-"] + _split_core(core[1:])
    if core.endswith("-") and len(core) > 1 and not core.endswith("--"):
        return _split_core(core[:-1]) + ["-"]
    if core.startswith("'") and len(core) > 1:
        rest = core[1:]
        if rest in ("s", "m", "d", "re", "ve", "ll", "em", "n",
                    "n'") or rest.startswith("t") and core in _SPECIAL_WORDS:
            return [core]
        return ["`"] + _split_core(rest)
    if core.endswith("'") and len(core) > 1:
        return _split_core(core[:-1]) + ["'"]
    c = _CLITIC.match(core)
    if c:
        stem, clitic = c.group(1), c.group(2)
        if clitic == "n't" or stem:
            return _split_core(stem) + [clitic]
    out.append(core)
    return out


def _split_chunk(chunk: str) -> list[str]:
    """One whitespace-delimited chunk -> tokens."""
    lead: list[str] = []
    trail: list[str] = []
    while chunk and chunk[0] in '"`([{':
        lead.append(_BRACKETS.get(chunk[0], "``" if chunk[0] == '"' else "`"))
        chunk = chunk[1:]
    while chunk and (chunk[-1] in '")]}' or (chunk[-1] in ".,;:!?" and len(chunk) > 1 and chunk[-2] in '")]}')):
        ch = chunk[-1]
        trail.insert(0, _BRACKETS.get(ch, "''" if ch == '"' else ch))
        chunk = chunk[:-1]
    # Punctuation after a closing bracket/quote is its own token: `dog.)` -> dog . -rrb-
    core_tokens = _split_core(chunk)
    return lead + core_tokens + trail


def ptb_tokenize(text: str) -> list[str]:
    """One caption -> its lowercased PTB tokens (punctuation not yet removed)."""
    tokens: list[str] = []
    for chunk in text.replace("\n", " ").lower().split():
        tokens.extend(_split_chunk(chunk))
    return tokens


def tokenize_caption(text: str) -> str:
    """What pycocoevalcap's PTBTokenizer returns for one caption: tokens joined by spaces, punctuation removed."""
    return " ".join(t for t in ptb_tokenize(text) if t not in PUNCTUATIONS)


def tokenize(captions: dict) -> dict:
    """{id: [caption, ...]} -> {id: [tokenized caption, ...]}, like PTBTokenizer.tokenize (plain strings)."""
    return {k: [tokenize_caption(c) for c in v] for k, v in captions.items()}
