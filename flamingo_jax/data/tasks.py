"""seqio Tasks (one per configured dataset) and Mixtures (the paper's weights) over the same preprocessing.

    names = register(config.data)                   # {'tasks': [...], 'mixture': 'flamingo_world_mixture'}
    ds = seqio.get_mixture_or_task(names['mixture']).get_dataset(sequence_length=None, split='train',
                                                                 shuffle=True, seed=0)

Each Task's source yields record INDICES of the dataset's random-access source; its preprocessor maps an
index to an example with the same numpy preprocessing as the grain pipeline (tf.numpy_function, seeded
by seqio's per-example seed). So seqio's sampling mixture, caching and evaluation tooling see exactly the
examples the trainer sees; the trainer itself uses mixture.make_mixture_iterator, which is exactly
resumable (a tf.data iterator is not, see pipeline.py).

Notes: seqio shuffles with a 1000-example buffer by default (pass shuffle_buffer_size for small data), and
a live tf.data iterator whose tf.numpy_function calls back into Python can block interpreter exit: delete
iterators when done.

Output features per example: tokens/targets/media_index int32[L], loss_mask float32[L],
images float32[T_img, F, S, S, 3], image_mask bool[T_img].
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

import ml_collections
import numpy as np

from flamingo_jax.data import mixture as mixture_lib
from flamingo_jax.data import preprocess, vocab as vocab_lib

_ORDER = ('tokens', 'targets', 'loss_mask', 'media_index', 'images', 'image_mask')


def _seqio_vocab(vocab: vocab_lib.Vocabulary, cache_dir: str):
  import seqio

  if isinstance(vocab, vocab_lib.SentencePieceVocab):
    path = os.path.join(cache_dir, f'seqio_{hashlib.sha256(vocab.model_proto).hexdigest()[:16]}.model')
    if not os.path.exists(path):
      os.makedirs(cache_dir, exist_ok=True)
      with open(path, 'wb') as f:
        f.write(vocab.model_proto)
    return seqio.SentencePieceVocabulary(path)
  return seqio.PassThroughVocabulary(size=vocab.size)


def _task_parts(data_config: ml_collections.ConfigDict, name: str, vocab: vocab_lib.Vocabulary):
  import tensorflow as tf

  spec = mixture_lib.example_spec(data_config, name)
  ds_cfg = data_config.datasets[name]
  sources: dict[str, Any] = {}

  def source_for(split: str):
    if split not in sources:
      sources[split] = mixture_lib.open_source(data_config, ds_cfg, split)
    return sources[split]

  def dataset_fn(split: str, shuffle_files: bool, seed: int | None = None):
    n = len(source_for(split))
    ds = tf.data.Dataset.range(n).map(lambda i: {'index': i, 'split': tf.constant(split)})
    if shuffle_files:
      ds = ds.shuffle(n, seed=seed)
    return ds

  def make_example(index, split, seed):
    split = split.decode() if isinstance(split, bytes) else str(split)
    train = split == ds_cfg.split
    pre = preprocess.Preprocessor(spec, vocab, train=train)
    rng = np.random.default_rng([int(s) % 2**32 for s in seed])
    out = preprocess.safe_call(pre, source_for(split)[int(index)], rng)
    if 'dropped' in out:  # seqio has no counters: emit an empty example the filter below removes
      ex = {k: np.zeros(shape, dtype) for k, (shape, dtype) in shapes.items()}
      return [ex[k] for k in _ORDER] + [np.bool_(False)]
    ex = out['example']
    return [ex[k] for k in _ORDER] + [np.bool_(True)]

  L, T, F, S = spec.seq_len, spec.max_images, spec.frames, spec.image_size
  shapes = {'tokens': ((L,), np.int32), 'targets': ((L,), np.int32), 'loss_mask': ((L,), np.float32),
            'media_index': ((L,), np.int32), 'images': ((T, F, S, S, 3), np.float32),
            'image_mask': ((T,), np.bool_)}
  tf_types = [tf.as_dtype(shapes[k][1]) for k in _ORDER] + [tf.bool]

  import seqio

  @seqio.map_over_dataset(num_seeds=1)
  def to_example(x, seed):
    outs = tf.numpy_function(make_example, [x['index'], x['split'], seed], tf_types, stateful=False)
    ex = {k: tf.ensure_shape(v, shapes[k][0]) for k, v in zip(_ORDER, outs[:-1])}
    ex['_ok'] = outs[-1]
    return ex

  def is_ok(x):
    return x['_ok']

  def strip_flag(x):
    return {k: x[k] for k in _ORDER}

  def drop_bad(ds):
    return ds.filter(is_ok).map(strip_flag)

  return dataset_fn, [to_example, drop_bad], shapes


def register(data_config: ml_collections.ConfigDict, vocab: vocab_lib.Vocabulary | None = None,
             prefix: str = 'flamingo_world') -> dict[str, Any]:
  """Registers (idempotently) one Task per config.data.datasets entry and the mixture of config.data.mixture
  with weights lambda. Returns {'tasks': {dataset: task_name}, 'mixture': mixture_name}."""
  import seqio
  import tensorflow as tf

  vocab = vocab or mixture_lib.make_vocab(data_config)
  sp = _seqio_vocab(vocab, os.path.join(mixture_lib.data_dir(data_config), 'flamingo_vocab'))
  tasks = {}
  for name in data_config.datasets:
    task_name = f'{prefix}_{name}'
    dataset_fn, preprocessors, shapes = _task_parts(data_config, name, vocab)
    feats = {}
    for k, (shape, dtype) in shapes.items():
      if len(shape) == 1 and dtype == np.int32:
        feats[k] = seqio.Feature(sp, add_eos=False, dtype=tf.int32, required=True)
      else:
        feats[k] = seqio.ContinuousFeature(dtype=tf.as_dtype(dtype), rank=len(shape), required=True)
    seqio.TaskRegistry.remove(task_name)
    seqio.TaskRegistry.add(
        task_name, source=seqio.FunctionDataSource(dataset_fn, splits=[data_config.datasets[name].split]),
        preprocessors=preprocessors, output_features=feats)
    tasks[name] = task_name
  mixture_name = f'{prefix}_mixture'
  seqio.MixtureRegistry.remove(mixture_name)
  seqio.MixtureRegistry.add(mixture_name, [(tasks[n], float(data_config.datasets[n].weight))
                                           for n in data_config.mixture])
  return {'tasks': tasks, 'mixture': mixture_name}
