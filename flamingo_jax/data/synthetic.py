"""Random but well-formed mixture batches (config.data.source = 'synthetic') for tests, benchmarks and
ahead-of-time planning: no files, no tokenizer, exactly the batch layout of the real pipeline.

Each sequence interleaves random text with `max_images` `<image>` tokens (an `<EOC>` before every image but
the first), the paper's phi rule for media_index, and a loss on every real next token. Deterministic in
(seed, step, dataset): every process draws the same global batch and keeps its own rows, so a run on
N processes sees exactly the batches of a single-process run. The state is the step counter.
"""

from __future__ import annotations

from typing import Mapping

import ml_collections
import numpy as np


def synthetic_batch(rng: np.random.Generator, batch: int, seq_len: int, max_images: int, frames: int, image_size: int,
                    vocab_size: int, image_id: int, eoc_id: int) -> dict[str, np.ndarray]:
    """One dataset batch (see flamingo_jax.train_step for the layout)."""
    tokens = rng.integers(1, vocab_size, (batch, seq_len + 1)).astype(np.int32)
    span = max(seq_len // max(max_images, 1), 2)
    for j in range(max_images):
        pos = 1 + j * span
        if pos < seq_len:
            tokens[:, pos] = image_id
            if j:
                tokens[:, pos - 1] = eoc_id
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    media_index = np.cumsum(inputs == image_id, axis=1).astype(np.int32)
    loss_mask = (targets != image_id).astype(np.float32)
    images = rng.random((batch, max(max_images, 1), frames, image_size, image_size, 3), dtype=np.float32)
    image_mask = np.ones((batch, max(max_images, 1)), bool)
    return dict(tokens=inputs, targets=targets, loss_mask=loss_mask, media_index=media_index, images=images,
                image_mask=image_mask)


class SyntheticMixture:
    """Iterator of {dataset: batch} over config.data's mixture ('accumulate' or 'round_robin' mode)."""

    def __init__(self, data_config: ml_collections.ConfigDict, batch_sizes: Mapping[str, int], *, vocab_size: int,
                 image_id: int, eoc_id: int, seed: int = 0, process_index: int = 0, process_count: int = 1,
                 names: list[str] | None = None):
        self.config = data_config
        self.names = list(names if names is not None else data_config.mixture)
        self.batch_sizes = dict(batch_sizes)
        self.vocab = (vocab_size, image_id, eoc_id)
        self.seed, self.process_index, self.process_count, self.step = seed, process_index, process_count, 0
        if data_config.mode not in ("accumulate", "round_robin"):
            raise ValueError(f"synthetic data supports modes 'accumulate' and 'round_robin', not "
                             f"{data_config.mode!r}")

    def get_state(self) -> dict:
        return {"step": self.step}

    def set_state(self, state: Mapping) -> None:
        self.step = int(state["step"])

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, dict[str, np.ndarray]]:
        if self.config.mode == "accumulate":
            names = self.names
        else:
            names = [self.names[self.step % len(self.names)]]
        out = {}
        for name in names:
            d = self.config.datasets[name]
            rng = np.random.default_rng([self.seed, self.step, self.names.index(name)])
            local = self.batch_sizes[name]
            full = synthetic_batch(rng, local * self.process_count, d.seq_len, d.max_images, d.frames,
                                   self.config.image_size, *self.vocab)
            rows = slice(self.process_index * local, (self.process_index + 1) * local)
            out[name] = {k: v[rows] for k, v in full.items()}
        self.step += 1
        return out
