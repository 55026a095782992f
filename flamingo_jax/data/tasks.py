"""seqio Tasks (one per configured dataset) and Mixtures (the paper's weights) over the same examples as the
grain pipeline.

    names = register(config.data)                   # {'tasks': {...}, 'mixture': 'flamingo_world_mixture'}
    ds = seqio.get_mixture_or_task(names['mixture']).get_dataset(sequence_length=None, split='train',
                                                                 shuffle=False, seed=0)

Each Task's source yields positions g of the dataset's endless example stream (pipeline.example_stream: the
grain shuffle per epoch, the per-position rng); its preprocessor computes element g with the same numpy
preprocessing (tf.numpy_function). So a Task yields exactly the examples the grain iterator yields, in the
same order, sharded the same way (seqio.ShardInfo(p, P) gives g = p, p + P, ... as grain's [p::P]): seqio's
mixtures, caching and evaluation tooling, and config.data.source = 'seqio' training (seqio_source.py), see
the grain trainer's examples. The shuffle is in the stream: get_dataset(shuffle=True) would add a second,
buffered one (seqio's `seed` is unused; config.data.seed decides). `start` (register) begins the stream at a
saved position: how the seqio training source resumes without replaying.

Output features per example: tokens/targets/media_index int32[L], loss_mask float32[L],
images float32[T_img, F, S, S, 3], image_mask bool[T_img], and _index int64 (g). With drop_bad=False
(the training source) dropped records are not filtered but flagged in _dropped (their reason; '' for a kept
example) and repairs listed in _events (';'-joined), so the trainer counts them as the grain iterator does.

Note: a live tf.data iterator whose tf.numpy_function calls back into Python can block interpreter exit:
delete iterators when done.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any, Mapping

import ml_collections
import numpy as np

from flamingo_jax.data import mixture as mixture_lib
from flamingo_jax.data import pipeline, preprocess, vocab as vocab_lib

FEATURES = ("tokens", "targets", "loss_mask", "media_index", "images", "image_mask")
_STREAM_END = 2**62  # endless: the stream repeats its source epoch after epoch


def _seqio_vocab(vocab: vocab_lib.Vocabulary, cache_dir: str):
    import seqio

    if isinstance(vocab, vocab_lib.SentencePieceVocab):
        path = os.path.join(cache_dir, f"seqio_{hashlib.sha256(vocab.model_proto).hexdigest()[:16]}.model")
        if not os.path.exists(path):
            os.makedirs(cache_dir, exist_ok=True)
            with open(path, "wb") as f:
                f.write(vocab.model_proto)
        return seqio.SentencePieceVocabulary(path)
    return seqio.PassThroughVocabulary(size=vocab.size)


def feature_shapes(data_config: ml_collections.ConfigDict, name: str) -> dict[str, tuple[tuple, Any]]:
    """name -> (shape, numpy dtype) of one example of config.data.datasets[name]."""
    spec = mixture_lib.example_spec(data_config, name)
    L, T, F, S = spec.seq_len, spec.max_images, spec.frames, spec.image_size
    return {
        "tokens": ((L, ), np.int32), "targets": ((L, ), np.int32), "loss_mask": ((L, ), np.float32),
        "media_index": ((L, ), np.int32), "images": ((T, F, S, S, 3), np.float32), "image_mask": ((T, ), np.bool_)
    }


def _task_parts(data_config: ml_collections.ConfigDict, name: str, vocab: vocab_lib.Vocabulary, start: int,
                drop_bad: bool, process_index: int, process_count: int):
    import seqio
    import tensorflow as tf

    ds_cfg = data_config.datasets[name]
    pre = preprocess.Preprocessor(mixture_lib.example_spec(data_config, name), vocab, train=True)
    shapes = feature_shapes(data_config, name)
    stream: list = []  # opened on first use (preparing a TFDS source is not a registration's job)

    def element(g):
        if not stream:
            source = mixture_lib.open_source(data_config, ds_cfg, process_index=process_index,
                                             process_count=process_count)
            stream.append(pipeline.example_stream(name, source, pre, data_config.seed, shuffle=True))
        out = stream[0][int(g)]
        if "dropped" in out:
            ex = {k: np.zeros(shape, dtype) for k, (shape, dtype) in shapes.items()}
            return [ex[k] for k in FEATURES] + [np.bytes_(out["dropped"]), np.bytes_("")]
        ex = out["example"]
        return [ex[k] for k in FEATURES] + [np.bytes_(""), np.bytes_(";".join(out["events"]))]

    def dataset_fn(split: str, shuffle_files: bool, seed: int | None = None):
        del split, shuffle_files, seed  # one endless stream; its shuffle and seed are config.data's
        return tf.data.Dataset.range(start, _STREAM_END).map(lambda g: {"_index": g})

    tf_types = [tf.as_dtype(shapes[k][1]) for k in FEATURES] + [tf.string, tf.string]

    @seqio.map_over_dataset
    def to_example(x):
        outs = tf.numpy_function(element, [x["_index"]], tf_types, stateful=False)
        ex = {k: tf.ensure_shape(v, shapes[k][0]) for k, v in zip(FEATURES, outs[:-2])}
        ex.update(_index=x["_index"], _dropped=tf.ensure_shape(outs[-2], ()), _events=tf.ensure_shape(outs[-1], ()))
        return ex

    def kept(x):
        return tf.equal(x["_dropped"], b"")

    def drop_flagged(ds):
        return ds.filter(kept)

    return dataset_fn, [to_example] + ([drop_flagged] if drop_bad else []), shapes


def task_name(prefix: str, name: str) -> str:
    return f"{prefix}_{name}"


def register(data_config: ml_collections.ConfigDict, vocab: vocab_lib.Vocabulary | None = None,
             prefix: str = "flamingo_world", start: Mapping[str, int] | None = None, drop_bad: bool = True, names=None,
             process_index: int = 0, process_count: int = 1) -> dict[str, Any]:
    """Registers (again, replacing) one Task per config.data.datasets entry (or per `names`) and the mixture of
    config.data.mixture with weights lambda. start: dataset -> first stream position (default 0). Returns
    {'tasks': {dataset: task_name}, 'mixture': mixture_name}."""
    import seqio
    import tensorflow as tf

    vocab = vocab or mixture_lib.make_vocab(data_config)
    sp = _seqio_vocab(vocab, os.path.join(mixture_lib.data_dir(data_config), "flamingo_vocab"))
    tasks = {}
    for name in (names if names is not None else data_config.datasets):
        dataset_fn, preprocessors, shapes = _task_parts(data_config, name, vocab, int((start or {}).get(name, 0)),
                                                        drop_bad, process_index, process_count)
        feats = {}
        for k, (shape, dtype) in shapes.items():
            if len(shape) == 1 and dtype == np.int32:
                feats[k] = seqio.Feature(sp, add_eos=False, dtype=tf.int32, required=True)
            else:
                feats[k] = seqio.ContinuousFeature(dtype=tf.as_dtype(dtype), rank=len(shape), required=True)
        tasks[name] = task_name(prefix, name)
        seqio.TaskRegistry.remove(tasks[name])
        seqio.TaskRegistry.add(tasks[name], source=seqio.FunctionDataSource(dataset_fn,
                                                                            splits=[data_config.datasets[name].split]),
                               preprocessors=preprocessors, output_features=feats)
    mixture_name = f"{prefix}_mixture"
    if all(n in tasks for n in data_config.mixture):
        seqio.MixtureRegistry.remove(mixture_name)
        seqio.MixtureRegistry.add(mixture_name,
                                  [(tasks[n], float(data_config.datasets[n].weight)) for n in data_config.mixture])
    return {"tasks": tasks, "mixture": mixture_name}
