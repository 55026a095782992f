"""Shared helpers for the data tests: one tiny world config and vocabulary per test session."""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile

import ml_collections

from flamingo_jax.data import config as config_lib
from flamingo_jax.data import mixture, vocab as vocab_lib

_TMP = tempfile.mkdtemp(prefix="flamingo_data_test_")
atexit.register(shutil.rmtree, _TMP, ignore_errors=True)


def tiny_config(**overrides) -> ml_collections.ConfigDict:
    """tiny_data_config() with data_dir in a per-session temporary directory."""
    c = config_lib.tiny_data_config()
    c.data_dir = _TMP
    for k, v in overrides.items():
        setattr(c, k, v)
    return c


@functools.lru_cache(maxsize=None)
def tiny_vocab() -> vocab_lib.Vocabulary:
    """The tiny world's SentencePiece vocabulary (trained once per session, about a second)."""
    return mixture.make_vocab(tiny_config())
