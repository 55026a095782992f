"""A frozen LM read under another vocabulary is an error, not silent garbage (run_checks.check_vocabulary)."""

import json
import os

import ml_collections
import pytest

from flamingo_jax import run_checks
from flamingo_jax.convert.store import FORMAT
from flamingo_jax.data.vocab import train_sentencepiece, SentencePieceVocab


class _Data:
    """What run_checks.check_vocabulary reads from the mixture iterator: its vocabulary and the id check."""

    def __init__(self, vocab):
        self.vocab = vocab
        self.checked = None

    def check_model_vocab(self, *ids):
        self.checked = ids


def _vocab(words: str) -> SentencePieceVocab:
    texts = [f"{words} {i} the cat sat on the mat" for i in range(200)]
    return SentencePieceVocab(train_sentencepiece(texts, 60), 64)


def _config(lm_dir: str) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(
        dict(model=dict(lm=dict(vocab_size=64), image_token_id=64, eoc_token_id=65),
             pretrained=dict(lm=lm_dir, vision="")))


def _lm_dir(tmp_path, vocab_sha256):
    d = tmp_path / "lm"
    d.mkdir()
    source = {"format": "flamingo_jax.pretrain"}
    if vocab_sha256:
        source["vocab_sha256"] = vocab_sha256
    (d / "config.json").write_text(json.dumps(dict(format=FORMAT, kind="lm", subtree="lm", config={}, source=source)))
    return str(d)


def test_lm_pretrained_under_another_vocabulary_is_an_error(tmp_path):
    a, b = _vocab("dax vog rer"), _vocab("plimbet varno kuku")
    assert a.fingerprint() != b.fingerprint()
    lm = _lm_dir(tmp_path, a.fingerprint())
    run_checks.check_vocabulary(_config(lm), _Data(a))  # its own vocabulary: fine
    with pytest.raises(ValueError, match="pretrained under another vocabulary.*point config.data.vocab"):
        run_checks.check_vocabulary(_config(lm), _Data(b))


def test_model_ids_are_checked_and_unrecorded_vocabularies_pass(tmp_path):
    a = _vocab("dax vog rer")
    data = _Data(a)
    run_checks.check_vocabulary(_config(_lm_dir(tmp_path, None)), data)  # a converted LM records no vocabulary
    assert data.checked == (64, 64, 65)
    assert os.path.exists(tmp_path / "lm" / "config.json")


def test_fingerprint_is_the_id_to_text_map():
    a = _vocab("dax vog rer")
    again = SentencePieceVocab(a.model_proto, 64)
    assert again.fingerprint() == a.fingerprint()
    # the generic fingerprint (any Vocabulary) also separates them
    from flamingo_jax.data.vocab import Vocabulary
    generic = lambda v: Vocabulary.fingerprint(SentencePieceVocab(v.model_proto))  # noqa: E731  (ids = pieces)
    assert generic(a) == generic(again) != generic(_vocab("plimbet varno kuku"))
