"""config.data.source = 'seqio': training batches from seqio Tasks or Mixtures, with the grain mixture's API.

    it = make_seqio_iterator(config.data, batch_size_per_dataset, process_index, process_count)
    next(it) -> {dataset: batch}; it.get_state() / it.set_state(state); it.weights; it.vocab; it.metrics()

Each entry of config.data.mixture trains on config.data.datasets[name].seqio_task:
  ''    our Task of that dataset (tasks.register): the same example stream as the grain source, so the
        batches, and the losses, equal the grain source's (tests/test_data_seqio_source.py). Its position
        (the next stream index) is saved; a resume starts the Task's source there: nothing is replayed.
  name  a Task or Mixture the user registered with seqio (import its module before training, e.g. from the
        experiment config). Its examples must have the features of tasks.FEATURES with the dataset's shapes
        (tasks.feature_shapes); they are read with get_dataset(split, shuffle=True, seed=config.data.seed,
        shard_info=(process_index, process_count)). Its state is the count of examples taken; a resume takes
        get_dataset(...).skip(count), exact for a deterministic pipeline (seqio's seeded shuffle is) but
        REPLAYING the count: a resume re-reads and re-preprocesses every example that dataset consumed since
        step 0 (steps x per-process batch; t5x avoids it with cached Tasks or tf.data iterator checkpoints).
Batches are assembled in Python, one dataset batch per step in the mixture's mode ('accumulate' or
'round_robin'), with the same loss weights lambda: the same accumulation as the grain source. Dropped records
of our Tasks are counted per reason exactly as the grain iterator counts them.
"""

from __future__ import annotations

import collections
from typing import Any, Mapping

import ml_collections
import numpy as np

from flamingo_jax.data import mixture as mixture_lib
from flamingo_jax.data import tasks as tasks_lib
from flamingo_jax.data.pipeline import _MAX_CONSECUTIVE_DROPS, stack

STATE_VERSION = 1
PREFIX = "flamingo_train"


class SeqioDatasetIterator:
    """Endless batches of one seqio Task/Mixture for one process (shapes as pipeline.DatasetIterator)."""

    def __init__(self, data_config: ml_collections.ConfigDict, name: str, vocab, batch_size: int,
                 process_index: int = 0, process_count: int = 1):
        self.data_config, self.name, self.vocab, self.batch_size = data_config, name, vocab, batch_size
        self.process_index, self.process_count = process_index, process_count
        self.task = data_config.datasets[name].get("seqio_task", "")
        self.counters: collections.Counter = collections.Counter()
        self.batches = 0
        self.next_index = process_index  # ours: the next stream position g of this process
        self.taken = 0  # a user's Task: examples taken
        self._it = None

    def _open(self):
        import seqio

        split = self.data_config.datasets[self.name].split
        shard = seqio.ShardInfo(index=self.process_index, num_shards=self.process_count)
        if self.task:
            ds = seqio.get_mixture_or_task(self.task).get_dataset(sequence_length=None, split=split, shuffle=True,
                                                                  seed=self.data_config.seed, shard_info=shard)
            ds = ds.repeat().skip(self.taken)
        else:
            # The Task's source is the unsharded range from `start`; shard p of it begins at start + p.
            start = self.next_index - self.process_index
            names = tasks_lib.register(self.data_config, self.vocab, prefix=PREFIX, start={self.name: start},
                                       drop_bad=False, names=[self.name], process_index=self.process_index,
                                       process_count=self.process_count)
            ds = seqio.get_mixture_or_task(names["tasks"][self.name]).get_dataset(sequence_length=None, split=split,
                                                                                  shuffle=False, shard_info=shard)
        return ds.as_numpy_iterator()

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        if self._it is None:
            self._it = self._open()
        examples, drops_in_a_row = [], 0
        while len(examples) < self.batch_size:
            ex = next(self._it)
            self.counters["records"] += 1
            self.taken += 1
            if "_index" in ex:
                self.next_index = int(ex["_index"]) + self.process_count
            reason = ex.get("_dropped", b"").decode() if isinstance(ex.get("_dropped", b""), bytes) else ""
            if reason:
                self.counters[f"dropped/{reason}"] += 1
                drops_in_a_row += 1
                if drops_in_a_row >= _MAX_CONSECUTIVE_DROPS:
                    raise RuntimeError(f"dataset {self.name!r}: {drops_in_a_row} bad records in a row "
                                       f"(counters {dict(self.counters)}); check its files or builder")
                continue
            drops_in_a_row = 0
            events = ex.get("_events", b"")
            for ev in (events.decode().split(";") if events else []):
                self.counters[f"repaired/{ev}"] += 1
            examples.append({k: ex[k] for k in tasks_lib.FEATURES})
        self.batches += 1
        return stack(examples)

    def get_state(self) -> dict[str, Any]:
        return {
            "seqio_task": self.task, "next_index": self.next_index, "taken": self.taken,
            "counters": dict(self.counters), "batches": self.batches
        }

    def set_state(self, state: Mapping[str, Any]) -> None:
        if state.get("seqio_task", None) != self.task:
            raise ValueError(f'dataset {self.name!r}: the data state was saved reading seqio task '
                             f'{state.get("seqio_task")!r}, this run reads {self.task!r}: restore with the same '
                             'config.data.datasets.<name>.seqio_task')
        self.next_index, self.taken = int(state["next_index"]), int(state["taken"])
        self.counters = collections.Counter(state["counters"])
        self.batches = int(state["batches"])
        self._it = None  # reopened at the saved position on the next batch

    def close(self) -> None:
        self._it = None


class SeqioMixtureIterator(mixture_lib.MixtureIterator):
    """mixture.MixtureIterator over SeqioDatasetIterators ('sample' mode is the grain source's only)."""

    def get_state(self) -> dict[str, Any]:
        return {**super().get_state(), "source": "seqio"}

    def set_state(self, state: Mapping[str, Any]) -> None:
        if state.get("source") != "seqio":
            raise ValueError("the stored data state is the grain source's: resume with config.data.source as it was "
                             "saved, or start the data afresh")
        super().set_state({k: v for k, v in state.items() if k != "source"})


def make_seqio_iterator(data_config: ml_collections.ConfigDict, batch_size_per_dataset: Mapping[str, int],
                        process_index: int = 0, process_count: int = 1, vocab=None) -> SeqioMixtureIterator:
    if data_config.mode == "sample":
        raise ValueError("config.data.source='seqio' trains in mode 'accumulate' or 'round_robin'; for weighted "
                         "sampling name a seqio Mixture as one dataset's seqio_task")
    vocab = vocab or mixture_lib.make_vocab(data_config)
    its = {
        n: SeqioDatasetIterator(data_config, n, vocab, batch_size_per_dataset[n], process_index, process_count)
        for n in data_config.mixture
    }
    weights = {n: data_config.datasets[n].weight for n in data_config.mixture}
    return SeqioMixtureIterator(its, weights, data_config.mode, data_config.seed, vocab)
