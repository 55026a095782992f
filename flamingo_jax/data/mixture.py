"""The training mixture: batches keyed by dataset, deterministic, sharded per process, exactly resumable.

    it = make_mixture_iterator(config.data, seed=0, process_index=jax.process_index(),
                               process_count=jax.process_count())
    batch = next(it)          # {'m3w': {...}, 'align': {...}, ...} in mode 'accumulate'
    state = it.get_state()    # small JSON-serialisable dict: store it in the checkpoint
    it.set_state(state)       # the next batch is exactly the one that followed `state`
    it.weights                # {'m3w': 1.0, 'align': 0.2, ...}: lambda_m of the loss
    it.vocab                  # Vocabulary: base_size, image_id, eoc_id, ...
    it.metrics()              # {'data/<name>/dropped/<reason>': n, ...} counters for logging

Modes (config.data.mode): 'accumulate' yields every dataset each step (the paper's default);
'round_robin' yields one dataset per step, cycling in mixture order; 'sample' yields one dataset per step
drawn with probability proportional to its weight from rng(seed, step) (so it too is resumable).
Per-dataset batch shapes: see pipeline.DatasetIterator.
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

import ml_collections
import numpy as np

from flamingo_jax.data import builders, preprocess
from flamingo_jax.data import config as config_lib
from flamingo_jax.data import vocab as vocab_lib
from flamingo_jax.data.pipeline import DatasetIterator, dataset_seed
from flamingo_jax.data.world.generate import World
from flamingo_jax.data.world.source import WorldSource

STATE_VERSION = 1


def data_dir(data_config: ml_collections.ConfigDict) -> str:
    return data_config.data_dir or os.path.join(os.path.expanduser("~"), "tensorflow_datasets")


def open_source(data_config: ml_collections.ConfigDict, ds_config: ml_collections.ConfigDict, split: str | None = None,
                process_index: int = 0, process_count: int = 1) -> Sequence[dict[str, Any]]:
    """Random-access records of one dataset entry (world read directly, or a prepared TFDS builder; with
    several processes only process 0 prepares, see builders.data_source)."""
    split = split or ds_config.split
    if ds_config.builder == "flamingo_world":
        world = config_lib.world_config(data_config)
        if data_config.source in ("world", "seqio"):  # seqio's Tasks serve the same source as grain's 'world'
            return WorldSource(World(world), ds_config.builder_config, split)
        module = builders.builder_module("flamingo_world")
        cfg = module.make_config(ds_config.builder_config, world)
        return builders.data_source("flamingo_world", cfg, split, data_dir(data_config), process_index=process_index,
                                    process_count=process_count)
    if data_config.source not in ("world", "tfds", "seqio"):
        raise ValueError(f"config.data.source must be 'world', 'tfds' or 'seqio', got {data_config.source!r}")
    return builders.data_source(ds_config.builder, ds_config.builder_config or None, split, data_dir(data_config),
                                manual_dir(data_config, ds_config), process_index, process_count)


def manual_dir(data_config: ml_collections.ConfigDict, ds_config: ml_collections.ConfigDict) -> str | None:
    """Where a real-file builder finds its files: the entry's own manual_dir, else <config.data.manual_dir>/
    <builder> when that folder exists, else config.data.manual_dir ('' = TFDS's <data_dir>/downloads/manual)."""
    own = ds_config.get("manual_dir", "")
    if own:
        return own
    root = data_config.manual_dir
    if root and os.path.isdir(os.path.join(root, ds_config.builder)):
        return os.path.join(root, ds_config.builder)
    return root or None


def make_vocab(data_config: ml_collections.ConfigDict) -> vocab_lib.Vocabulary:
    """The vocabulary of config.data.vocab (the world's is trained once and cached in data_dir)."""
    return vocab_lib.make_vocab(data_config.vocab, config_lib.world_config(data_config),
                                cache_dir=os.path.join(data_dir(data_config), "flamingo_vocab"))


def example_spec(data_config: ml_collections.ConfigDict, name: str) -> preprocess.ExampleSpec:
    ds = data_config.datasets[name]
    return preprocess.ExampleSpec.from_config(ds.to_dict(), image_size=data_config.image_size)


def make_dataset_iterator(data_config: ml_collections.ConfigDict, name: str, vocab: vocab_lib.Vocabulary,
                          batch_size: int | None = None, seed: int | None = None, process_index: int = 0,
                          process_count: int = 1, train: bool = True,
                          source: Sequence | None = None) -> DatasetIterator:
    """Batches of the dataset config.data.datasets[name] for this process."""
    if name not in data_config.datasets:
        raise ValueError(f"dataset {name!r} is not in config.data.datasets ({sorted(data_config.datasets)})")
    ds = data_config.datasets[name]
    pre = preprocess.Preprocessor(example_spec(data_config, name), vocab, train=train)
    if source is None:
        source = open_source(data_config, ds, process_index=process_index, process_count=process_count)
    return DatasetIterator(name, source, pre, batch_size or ds.batch_size, data_config.seed if seed is None else seed,
                           process_index, process_count, data_config.num_threads, data_config.prefetch, shuffle=train,
                           num_workers=data_config.get("num_workers", 0))


class MixtureIterator:
    """`{dataset_name: batch}` per step (module docstring)."""

    def __init__(self, iterators: Mapping[str, DatasetIterator], weights: Mapping[str, float], mode: str, seed: int,
                 vocab: vocab_lib.Vocabulary):
        if mode not in ("accumulate", "round_robin", "sample"):
            raise ValueError(f"config.data.mode must be 'accumulate', 'round_robin' or 'sample', got {mode!r}")
        if not iterators:
            raise ValueError("the mixture is empty: config.data.mixture lists no dataset")
        self.iterators = dict(iterators)
        self.names = list(iterators)
        self.weights = {n: float(weights[n]) for n in self.names}
        if mode == "sample" and sum(self.weights.values()) <= 0:
            raise ValueError("sampling mode needs positive weights")
        self.mode, self.seed, self.vocab = mode, int(seed), vocab
        self.step = 0

    def __iter__(self):
        return self

    def choose(self, step: int) -> list[str]:
        """The dataset names that step `step` yields."""
        if self.mode == "accumulate":
            return self.names
        if self.mode == "round_robin":
            return [self.names[step % len(self.names)]]
        p = np.array([self.weights[n] for n in self.names])
        rng = np.random.default_rng([dataset_seed(self.seed, "mixture"), step])
        return [self.names[int(rng.choice(len(p), p=p / p.sum()))]]

    def __next__(self) -> dict[str, dict[str, np.ndarray]]:
        out = {n: next(self.iterators[n]) for n in self.choose(self.step)}
        self.step += 1
        return out

    def get_state(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION, "step": self.step,
            "datasets": {n: it.get_state()
                         for n, it in self.iterators.items()}
        }

    def set_state(self, state: Mapping[str, Any]) -> None:
        if state.get("version") != STATE_VERSION:
            raise ValueError(f'data iterator state version {state.get("version")} != {STATE_VERSION}')
        missing = set(self.iterators) - set(state["datasets"])
        if missing:
            raise ValueError(f"the stored data state lacks datasets {sorted(missing)}: was the mixture changed? "
                             "Start the data afresh (do not restore the iterator) if that was intended.")
        for n, it in self.iterators.items():
            it.set_state(state["datasets"][n])
        self.step = int(state["step"])

    def check_model_vocab(self, vocab_size: int, image_id: int, eoc_id: int) -> None:
        """Raises a clear error when the model's token ids disagree with this data's vocabulary."""
        want = (self.vocab.base_size, self.vocab.image_id, self.vocab.eoc_id)
        if (vocab_size, image_id, eoc_id) != want:
            raise ValueError(f"model (lm.vocab_size, image id, eoc id) = {(vocab_size, image_id, eoc_id)} but the data "
                             f"vocabulary gives {want}: set config.model.lm.vocab_size = config.data.vocab.size "
                             f"({self.vocab.base_size})")

    def close(self) -> None:
        for it in self.iterators.values():
            it.close()

    def metrics(self) -> dict[str, int]:
        """Flat counters for logging: records read, dropped and repaired per reason, per dataset."""
        return {f"data/{n}/{k}": v for n, it in self.iterators.items() for k, v in sorted(it.counters.items())}


def make_mixture_iterator(data_config: ml_collections.ConfigDict,
                          batch_size_per_dataset: Mapping[str, int] | None = None, seed: int | None = None,
                          process_index: int = 0, process_count: int = 1, vocab: vocab_lib.Vocabulary | None = None,
                          names: Sequence[str] | None = None, train: bool = True) -> MixtureIterator:
    """The training iterator of config.data (see the module docstring for the API).

    config.data.datasets[name].batch_size is the GLOBAL batch; each process reads batch_size // process_count
    unless batch_size_per_dataset gives the per-process sizes. names overrides config.data.mixture (e.g. an
    ablation without video); seed overrides config.data.seed. Every process must use the same seed.
    """
    vocab = vocab or make_vocab(data_config)
    names = list(names if names is not None else data_config.mixture)
    seed = data_config.seed if seed is None else seed
    sizes = dict(batch_size_per_dataset or {})
    for n in names:
        if n not in sizes:
            global_batch = data_config.datasets[n].batch_size
            if global_batch % process_count:
                raise ValueError(f"dataset {n!r}: global batch {global_batch} does not split over {process_count} "
                                 "processes; change config.data.datasets.<name>.batch_size")
            sizes[n] = global_batch // process_count
    its = {
        n: make_dataset_iterator(data_config, n, vocab, sizes[n], seed, process_index, process_count, train)
        for n in names
    }
    weights = {n: data_config.datasets[n].weight for n in names}
    return MixtureIterator(its, weights, data_config.mode, seed, vocab)
