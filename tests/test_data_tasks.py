"""seqio Tasks and the Mixture over the same preprocessing as the grain pipeline."""

import seqio

from flamingo_jax.data import mixture, tasks
from flamingo_jax.data.testing import tiny_config, tiny_vocab


def test_seqio_tasks_and_mixture_with_paper_weights():
  cfg = tiny_config()
  v = tiny_vocab()
  names = tasks.register(cfg, v)
  mix = seqio.get_mixture_or_task(names['mixture'])
  rates = {t.name: mix.get_rate(t) for t in mix.tasks}
  assert rates == {names['tasks'][n]: cfg.datasets[n].weight for n in cfg.mixture}

  task = seqio.get_mixture_or_task(names['tasks']['align'])
  ds = task.get_dataset(sequence_length=None, split='train', shuffle=False, seed=0)
  examples = list(ds.take(4).as_numpy_iterator())
  captions = {r['text'] for r in (mixture.open_source(cfg, cfg.datasets.align)[i] for i in range(4))}
  for ex in examples:
    assert ex['tokens'].shape == (cfg.datasets.align.seq_len,) and ex['images'].shape == (1, 1, 32, 32, 3)
    assert ex['tokens'][1] == v.image_id and ex['image_mask'].tolist() == [True]
  decoded = {v.decode(ex['tokens'], markers=False).replace('<image>', '').split('<EOC>')[0].strip()
             for ex in examples}
  assert decoded == {c.strip() for c in captions}  # unshuffled: the first four records, in some order

  it = mix.get_dataset(sequence_length=None, split='train', shuffle=False, seed=0).as_numpy_iterator()
  seen = {next(it)['images'].shape for _ in range(12)}
  assert (5, 1, 32, 32, 3) in seen  # the interleaved task (weight 1.0) dominates the mixture
  del it  # a live tf.data iterator running tf.numpy_function can block interpreter exit
