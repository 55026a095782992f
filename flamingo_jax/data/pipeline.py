"""Per-dataset batch iterators: grain over random-access sources, deterministic and exactly resumable.

Why grain over random-access sources (and not tf.data/seqio at training time): a tf.data iterator can
only be checkpointed as an opaque TF object, and seqio's mixture sampling is stateful inside tf.data.
Here every example is a pure function of its GLOBAL index g in an endless stream:

    record   = source[perm_epoch(g)]           grain shuffle: a fresh permutation per epoch, from the seed
    example  = preprocess(record, rng(seed, g)) grain random_map: per-index Philox rng
    process p reads g = p, p + P, p + 2P, ...   (sharding by slicing the stream)

so the iterator state is just grain's {'next_index': k} plus our counters: a small JSON object. Restoring
it yields exactly the next batch, whatever the number of read threads.

Decode-heavy datasets (320x320 JPEGs, 8-frame clips) can preprocess in worker processes (config.data.
num_workers > 0: grain's mp_prefetch). Every transformation is a MapDataset one (no filter), so each worker
computes a slice of the same index stream and grain interleaves them back in order: the batches are the
same as with threads, and grain's mp_prefetch state (each worker's next index) restores exactly. A state
saved with N workers must be restored with N workers (grain's state has one entry per worker). Dropped records are skipped
in the consuming thread (not by grain's filter) so that their counts are part of the same state.
The seqio Tasks/Mixtures in tasks.py wrap the same preprocessing for the seqio ecosystem.
"""

from __future__ import annotations

import collections
import copy
import zlib
from typing import Any, Mapping, Sequence

import grain
import numpy as np

from flamingo_jax.data import preprocess

# A dataset where this many records in a row are bad is broken, not noisy: stop with a clear message.
_MAX_CONSECUTIVE_DROPS = 1000


def dataset_seed(seed: int, name: str) -> int:
    """A stable per-dataset seed (Python's hash() is salted per process, crc32 is not)."""
    return (int(seed) * 1_000_003 + zlib.crc32(name.encode())) % (2**31)


class _Preprocess:
    """Picklable grain transform: (record, rng) -> safe_call result."""

    def __init__(self, pre: preprocess.Preprocessor):
        self.pre = pre

    def __call__(self, record: Any, rng: np.random.Generator) -> dict[str, Any]:
        return preprocess.safe_call(self.pre, record, rng)


def example_stream(name: str, source: Sequence, pre: preprocess.Preprocessor, seed: int,
                   shuffle: bool = True) -> grain.MapDataset:
    """The endless random-access stream of safe_call results of one dataset: element g is
    preprocess(source[perm_epoch(g)], rng(seed, g)) (module docstring). The seqio Tasks of tasks.py serve the
    same stream, so both training sources see the same examples."""
    s = dataset_seed(seed, name)
    ds = grain.MapDataset.source(source)
    if shuffle:
        ds = ds.shuffle(seed=s)
    return ds.repeat(None).random_map(_Preprocess(pre), seed=s + 1)


def stack(examples: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Batch: every key stacked on a new leading axis B."""
    return {k: np.stack([e[k] for e in examples]) for k in examples[0]}


class DatasetIterator:
    """Endless batches of one dataset for one process.

    Batches: tokens/targets/media_index int32[B, L], loss_mask float32[B, L],
    images float32[B, T_img, F, S, S, 3], image_mask bool[B, T_img].
    """

    def __init__(self, name: str, source: Sequence, pre: preprocess.Preprocessor, batch_size: int, seed: int,
                 process_index: int = 0, process_count: int = 1, num_threads: int = 2, prefetch: int = 16,
                 shuffle: bool = True, max_consecutive_drops: int = _MAX_CONSECUTIVE_DROPS, num_workers: int = 0):
        if not 0 <= process_index < process_count:
            raise ValueError(f"process_index {process_index} not in [0, {process_count})")
        if len(source) == 0:
            raise ValueError(f"dataset {name!r} has no records")
        self.name, self.batch_size, self.max_consecutive_drops = name, batch_size, max_consecutive_drops
        ds = example_stream(name, source, pre, seed, shuffle)[process_index::process_count]
        self._dataset = ds.to_iter_dataset(grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch))
        if num_workers > 0:
            from absl import flags

            if not flags.FLAGS.is_parsed():  # grain's workers read absl flags; a library caller may have none
                flags.FLAGS.mark_as_parsed()
            per_worker = max(1, prefetch // num_workers)
            self._dataset = self._dataset.mp_prefetch(
                grain.MultiprocessingOptions(num_workers=num_workers, per_worker_buffer_size=per_worker))
        self.num_workers = num_workers
        self._it = iter(self._dataset)
        self.counters: collections.Counter = collections.Counter()
        self.batches = 0

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        examples = []
        drops_in_a_row = 0
        while len(examples) < self.batch_size:
            out = next(self._it)
            self.counters["records"] += 1
            if "dropped" in out:
                self.counters[f'dropped/{out["dropped"]}'] += 1
                drops_in_a_row += 1
                if drops_in_a_row >= self.max_consecutive_drops:
                    raise RuntimeError(f"dataset {self.name!r}: {drops_in_a_row} bad records in a row "
                                       f"(counters {dict(self.counters)}); check its files or builder")
                continue
            drops_in_a_row = 0
            for ev in out["events"]:
                self.counters[f"repaired/{ev}"] += 1
            examples.append(out["example"])
        self.batches += 1
        return stack(examples)

    def get_state(self) -> dict[str, Any]:
        state = {"grain": copy.deepcopy(self._it.get_state()), "counters": dict(self.counters), "batches": self.batches}
        if self.num_workers:  # absent with threads only, so states saved before workers existed still load
            state["num_workers"] = self.num_workers
        return state

    def close(self) -> None:
        """Stops grain's worker processes (garbage collection would too, at an unspecified time)."""
        close = getattr(self._it, "close", None)
        if close:
            close()

    def set_state(self, state: Mapping[str, Any]) -> None:
        saved_workers = int(state.get("num_workers", 0))
        if saved_workers != self.num_workers:
            raise ValueError(f"dataset {self.name!r}: the data state was saved with config.data.num_workers="
                             f"{saved_workers} but this run has {self.num_workers}: resume with num_workers="
                             f"{saved_workers} (grain keeps one position per worker)")
        self._it.set_state(copy.deepcopy(dict(state["grain"])))
        self.counters = collections.Counter(state["counters"])
        self.batches = int(state["batches"])
