"""Input pipeline throughput: examples/s per dataset of config.data, printed as one JSON line each.

    python benchmarks/input_pipeline.py [--config experiments/tiny.py] [--source world|tfds] [--seconds 10]
                                        [--threads 2]

Measures each dataset's iterator alone (after one warm-up batch), so the figure is what that dataset's
preprocessing (decode, resize/pad, augment, tokenise, window) sustains on this machine, then the whole
mixture (steps/s, one batch of every dataset per step in 'accumulate' mode) to compare with the trainer's
step rate. With source=world it includes rendering the world on the fly; with source=tfds it reads
prepared array_record files (prepared on first use).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from flamingo_jax.data import config as config_lib  # noqa: E402
from flamingo_jax.data import mixture  # noqa: E402


def measure(data_config, name: str, vocab, seconds: float) -> dict:
  it = mixture.make_dataset_iterator(data_config, name, vocab)
  next(it)  # warm-up: thread start, first decode
  n, t0 = 0, time.perf_counter()
  while time.perf_counter() - t0 < seconds:
    n += next(it)['tokens'].shape[0]
  dt = time.perf_counter() - t0
  ds = data_config.datasets[name]
  return {'benchmark': 'input_pipeline', 'dataset': name, 'kind': ds.kind, 'source': data_config.source,
          'examples_per_s': round(n / dt, 1), 'batches_per_s': round(n / dt / ds.batch_size, 2),
          'batch_size': ds.batch_size, 'seq_len': ds.seq_len, 'image_size': data_config.image_size,
          'frames': ds.frames, 'threads': data_config.num_threads, 'seconds': round(dt, 1),
          'cpus': os.cpu_count(), 'machine': platform.machine()}


def measure_mixture(data_config, vocab, names, seconds: float) -> dict:
  """Whole mixture steps/s in config.data.mode (all datasets' read threads running at once)."""
  it = mixture.make_mixture_iterator(data_config, vocab=vocab, names=names)
  next(it)
  n, t0 = 0, time.perf_counter()
  while time.perf_counter() - t0 < seconds:
    next(it)
    n += 1
  dt = time.perf_counter() - t0
  return {'benchmark': 'input_pipeline', 'dataset': '+'.join(names), 'mode': data_config.mode,
          'source': data_config.source, 'steps_per_s': round(n / dt, 2), 'seconds': round(dt, 1),
          'threads': data_config.num_threads, 'cpus': os.cpu_count()}


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--config', default='', help='experiment config file with .data (default: default_data_config)')
  p.add_argument('--source', default='', help="override config.data.source ('world' or 'tfds')")
  p.add_argument('--seconds', type=float, default=10.0)
  p.add_argument('--threads', type=int, default=0, help='override config.data.num_threads')
  p.add_argument('--datasets', default='', help='comma-separated names (default: the mixture)')
  args = p.parse_args()
  if args.config:
    from flamingo_jax.data.preview import load_config
    cfg = load_config(args.config)
  else:
    cfg = config_lib.default_data_config()
  if args.source:
    cfg.source = args.source
  if args.threads:
    cfg.num_threads = args.threads
  vocab = mixture.make_vocab(cfg)
  names = args.datasets.split(',') if args.datasets else list(cfg.mixture)
  for name in names:
    print(json.dumps(measure(cfg, name, vocab, args.seconds)), flush=True)
  print(json.dumps(measure_mixture(cfg, vocab, names, args.seconds)), flush=True)


if __name__ == '__main__':
  main()
