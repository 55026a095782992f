"""Reading a generated world: one (subset, split) as a random-access source, and all its text.

    src = WorldSource(World(config), 'vqa', 'train')   # len(src), src[i] -> record dict (schema.py)
    for text in iter_world_text(world): ...             # the corpus the world's SentencePiece model learns
"""

from __future__ import annotations

from typing import Any, Iterator

from flamingo_jax.data.world.world_config import SUBSET_KINDS


class WorldSource:
    """Random-access source of one (subset, split): len() and [i] -> record dict (see schema.py)."""

    def __init__(self, world, subset: str, split: str):
        if subset not in SUBSET_KINDS:
            raise ValueError(f"unknown world subset {subset!r}; choose from {sorted(SUBSET_KINDS)}")
        self.world, self.subset, self.split = world, subset, split
        self.kind = SUBSET_KINDS[subset]
        self._n = world.config.num_records(subset, split)

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.world.record(self.subset, self.split, int(index))

    def __repr__(self) -> str:
        return f"WorldSource({self.subset}/{self.split}, n={self._n}, {self.world.config})"


def iter_world_text(world) -> Iterator[str]:
    """All the world's text (every subset, every split): the corpus the SentencePiece model learns."""
    for subset in SUBSET_KINDS:
        for split in world.config.splits(subset):
            for i in range(world.config.num_records(subset, split)):
                rec = world.record(subset, split, i, media=False)
                for key in ("text", "question"):
                    if key in rec:
                        yield rec[key]
                for key in ("texts", "captions", "answers"):
                    for t in rec.get(key, []):
                        yield t
