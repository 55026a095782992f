"""Vocabularies with Flamingo's two new tokens appended after the base vocabulary.

  image_id = base_size       (`<image>`, inserted as text where an image/video sits)
  eoc_id   = base_size + 1   (`<EOC>`, end of chunk: before every `<image>` but the first, and before EOS)

The model's LM keeps its base vocabulary (lm.vocab_size = base_size); only the two new embedding rows are
trained. Two implementations:
  - SentencePieceVocab: a SentencePiece model trained locally on the generated world's text
    (pad=0, eos=1, bos=2, unk=3), cached on disk keyed by the world config;
  - HFVocab: the tokenizer of an imported LM for real runs (transformers imported lazily; optional).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path
from typing import Iterable, Sequence

IMAGE_TOKEN = "<image>"
EOC_TOKEN = "<EOC>"


class Vocabulary:
    """Base class: subclasses provide _encode/_decode and the special ids of the base vocabulary."""
    base_size: int
    pad_id: int
    bos_id: int
    eos_id: int

    @property
    def image_id(self) -> int:
        return self.base_size

    @property
    def eoc_id(self) -> int:
        return self.base_size + 1

    @property
    def size(self) -> int:
        """Total embedding rows the model needs (base + `<image>` + `<EOC>`)."""
        return self.base_size + 2

    def encode(self, text: str) -> list[int]:
        """Plain text to base-vocabulary ids (no BOS/EOS). `<image>`/`<EOC>` markers are NOT parsed here."""
        raise NotImplementedError

    def _decode_base(self, ids: Sequence[int]) -> str:
        raise NotImplementedError

    def fingerprint(self) -> str:
        """sha256 naming the id -> text map: what a frozen LM's embedding rows were trained to mean."""
        return hashlib.sha256("\x00".join(self._decode_base([i]) for i in range(self.base_size)).encode()).hexdigest()

    def decode(self, ids: Iterable[int], markers: bool = True) -> str:
        """Ids to text; new tokens become `<image>`/`<EOC>` (and BOS/EOS `<BOS>`/`<EOS>` if markers); pads dropped."""
        out: list[str] = []
        run: list[int] = []

        def flush():
            if run:
                out.append(self._decode_base(run))
                run.clear()

        for i in ids:
            i = int(i)
            special = {self.image_id: IMAGE_TOKEN, self.eoc_id: EOC_TOKEN}
            if markers:
                special.update({self.bos_id: "<BOS>", self.eos_id: "<EOS>"})
            if i == self.pad_id:
                continue
            if i in special:
                flush()
                out.append(special[i])
            elif i in (self.bos_id, self.eos_id):
                flush()
            else:
                run.append(i)
        flush()
        return "".join(out)


class SentencePieceVocab(Vocabulary):
    """A SentencePiece model (bytes or file).

    base_size: the LM's vocabulary size, at least the number of pieces. A model trained with a soft size
    limit on a small corpus may have fewer pieces than asked; the ids in between are simply never produced,
    so the model config can keep the size it asked for (and <image> = base_size stays where it expects).
    """

    def __init__(self, model: bytes | str | os.PathLike, base_size: int | None = None):
        import sentencepiece as spm

        self.model_proto = model if isinstance(model, bytes) else Path(model).read_bytes()
        self._sp = spm.SentencePieceProcessor(model_proto=self.model_proto)
        pieces = self._sp.get_piece_size()
        if base_size is not None and base_size < pieces:
            raise ValueError(f"base_size {base_size} is smaller than the model's {pieces} pieces")
        self.base_size = base_size or pieces
        self.pad_id, self.eos_id, self.bos_id = self._sp.pad_id(), self._sp.eos_id(), self._sp.bos_id()
        if min(self.pad_id, self.eos_id, self.bos_id) < 0:
            raise ValueError("the SentencePiece model needs pad, bos and eos ids; train it with train_sentencepiece()")

    def encode(self, text: str) -> list[int]:
        return list(self._sp.encode(text))

    def fingerprint(self) -> str:
        return hashlib.sha256(self.model_proto).hexdigest()

    def _decode_base(self, ids: Sequence[int]) -> str:
        # Decoding piece by piece keeps the leading-space marker of the first piece (the model sees it).
        return "".join(self._sp.id_to_piece(int(i)) for i in ids).replace("\u2581", " ")

    def __getstate__(self):  # picklable for worker processes
        return {"model_proto": self.model_proto, "base_size": self.base_size}

    def __setstate__(self, state):
        self.__init__(state["model_proto"], state["base_size"])


class HFVocab(Vocabulary):
    """A HuggingFace tokenizer loaded from a LOCAL directory (no downloads); needs `transformers`."""

    def __init__(self, path: str):
        try:
            import transformers  # lazily: optional dependency
        except ImportError as e:
            raise ImportError("HFVocab needs `pip install transformers`; the world vocabulary does not") from e
        self._tok = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.base_size = len(self._tok)
        self.eos_id = self._tok.eos_token_id
        self.bos_id = self._tok.bos_token_id if self._tok.bos_token_id is not None else self.eos_id
        # LMs without a pad token: pad with EOS id; pads are masked out of the loss by position, not by id.
        self.pad_id = self._tok.pad_token_id if self._tok.pad_token_id is not None else self.eos_id

    def encode(self, text: str) -> list[int]:
        return list(self._tok.encode(text, add_special_tokens=False))

    def _decode_base(self, ids: Sequence[int]) -> str:
        return self._tok.decode(list(ids))


def train_sentencepiece(texts: Iterable[str], vocab_size: int, seed_sentencepiece_size: int = 100_000) -> bytes:
    """Trains a BPE SentencePiece model (pad=0, eos=1, bos=2, unk=3); returns the model bytes.

    Texts are fed with a leading space half of the time (deterministically alternating) so pieces exist for
    words both at the start of a text and after a space.

    vocab_size is a soft limit: a tiny corpus may give fewer pieces (Vocabulary.base_size is the truth).
    One thread and no input shuffling make the result a deterministic function of the text order.
    """
    import sentencepiece as spm

    buf = io.BytesIO()
    # Leading spaces are significant (GPT-style, add_dummy_prefix off), so the paper's "space prepended with
    # p = 0.5" augmentation really changes the first token; interleaved segments are joined with ' '.
    spm.SentencePieceTrainer.train(sentence_iterator=iter((" " + t if i % 2 else t) for i, t in enumerate(texts) if t),
                                   model_writer=buf, vocab_size=vocab_size, model_type="bpe", pad_id=0, eos_id=1,
                                   bos_id=2, unk_id=3, character_coverage=1.0, hard_vocab_limit=False, num_threads=1,
                                   shuffle_input_sentence=False, add_dummy_prefix=False, remove_extra_whitespaces=False,
                                   seed_sentencepiece_size=seed_sentencepiece_size, minloglevel=2, split_digits=True)
    return buf.getvalue()


def world_vocab(world_config, vocab_size: int = 1000, cache_dir: str | os.PathLike | None = None) -> SentencePieceVocab:
    """The SentencePiece vocabulary of a generated world, trained on all its text and cached on disk.

    Its base_size is exactly vocab_size (see SentencePieceVocab), so config.model.lm.vocab_size can be set
    from config.data.vocab.size before any training data exists.
    """
    from flamingo_jax.data import world as world_lib

    key = hashlib.sha256(json.dumps([repr(world_config), vocab_size]).encode()).hexdigest()[:16]
    path = Path(cache_dir) / f"world_spm_{key}.model" if cache_dir else None
    if path is not None and path.exists():
        return SentencePieceVocab(path, vocab_size)
    model = train_sentencepiece(world_lib.iter_world_text(world_lib.World(world_config)), vocab_size)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")  # one per process: two writers never share it
        tmp.write_bytes(model)
        tmp.replace(path)  # atomic: concurrent processes never read a half-written model
    return SentencePieceVocab(model, vocab_size)


def make_vocab(vocab_config, world_config=None, cache_dir: str | None = None) -> Vocabulary:
    """From config.data.vocab: kind 'world' (train/cached SentencePiece), 'sentencepiece' (path) or 'hf' (path)."""
    kind = vocab_config.kind
    if kind == "world":
        if world_config is None:
            raise ValueError("vocab.kind='world' needs the world config")
        return world_vocab(world_config, vocab_config.size, cache_dir)
    if kind == "sentencepiece":
        return SentencePieceVocab(vocab_config.path, vocab_config.get("size") or None)
    if kind == "hf":
        return HFVocab(vocab_config.path)
    raise ValueError(f"config.data.vocab.kind must be 'world', 'sentencepiece' or 'hf', got {kind!r}")
