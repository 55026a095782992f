"""What every part of the checkpoint package shares: item names, the error type, one-line messages, a barrier."""

from __future__ import annotations

import re

import jax

STATE, DATA, META = "state", "data", "meta"
FROZEN_FORMAT = "flamingo_jax.frozen/1"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used: frozen weights that differ, a config that no longer fits, or no
    intact step checkpoint left; or a save that failed."""


def one_line(e: BaseException, limit: int = 400) -> str:
    """An exception as one readable line: its type and first sentence, without TensorStore's bracketed
    [source locations=...] / [tensorstore_spec=...] / pybind reprs, cut at a word under `limit` characters."""
    text = re.sub(r"\[(source locations|tensorstore_[a-z_]+)(\[\d+\])?='.*?'\]", "", str(e), flags=re.S)
    text = re.sub(r"<[^<>]{0,200} object at 0x[0-9a-f]+>", "<object>", text)
    text = " ".join(text.split())
    if len(text) > limit:
        text = text[:limit].rsplit(" ", 1)[0] + " ..."
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def barrier(name: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices(name)
