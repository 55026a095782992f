"""Finding, preparing and reading the TFDS dataset builders shipped as `flamingo_jax_datasets`.

The builders live in the repository's `data/` folder, installed as the package `flamingo_jax_datasets`
(setup.py: package_dir={'flamingo_jax_datasets': 'data'}). From a source checkout that is not installed,
the folder is found next to the `flamingo_jax` package and registered under the same name, so a builder
is always imported under ONE module name (TFDS registers a builder class once per name).

Every builder is prepared in the array_record format, so its splits are random-access data sources that
grain reads by index (exact resume, see pipeline.py).
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any, Sequence

import flamingo_jax

PACKAGE = 'flamingo_jax_datasets'

# Builder name -> module inside the package.
BUILDERS = {name: name for name in (
    'flamingo_world',
    # training sources from local files
    'interleaved_generic', 'mmc4', 'image_text_pairs', 'video_text_frames',
    # evaluation sets from their official files
    'coco_karpathy', 'flickr30k', 'vqav2', 'okvqa', 'vizwiz', 'textvqa', 'hateful_memes', 'msvd_qa', 'vatex',
    # the paper's other held-out benchmarks
    'visdial', 'youcook2', 'msrvtt_qa', 'ivqa', 'rareact', 'nextqa', 'star',
)}


def datasets_package() -> ModuleType:
  """The imported `flamingo_jax_datasets` package (installed, or the checkout's data/ folder)."""
  if PACKAGE in sys.modules:
    return sys.modules[PACKAGE]
  local = Path(flamingo_jax.__file__).resolve().parent.parent / 'data' / '__init__.py'
  if local.exists():
    spec = importlib.util.spec_from_file_location(PACKAGE, local, submodule_search_locations=[str(local.parent)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[PACKAGE] = module
    spec.loader.exec_module(module)
    return module
  return importlib.import_module(PACKAGE)


def builder_module(name: str) -> ModuleType:
  if name not in BUILDERS:
    raise ValueError(f'unknown dataset builder {name!r}; available: {sorted(BUILDERS)}')
  datasets_package()
  return importlib.import_module(f'{PACKAGE}.{BUILDERS[name]}')


def builder_class(name: str):
  return builder_module(name).Builder


def get_builder(name: str, config: Any = None, data_dir: str | None = None, **kwargs):
  """A TFDS builder instance in the array_record format.

  For builders without predefined configs, a config NAME still separates datasets prepared from different
  manual directories (e.g. image_text_pairs 'align' and 'ltip' live in <data_dir>/image_text_pairs/align/...).
  """
  import tensorflow_datasets as tfds

  cls = builder_class(name)
  if isinstance(config, str) and config and not cls.BUILDER_CONFIGS:
    config = tfds.core.BuilderConfig(name=config, description=f'{name} prepared from its own manual dir')
  return cls(config=config or None, data_dir=data_dir or None, file_format='array_record', **kwargs)


def prepare(name: str, config: Any = None, data_dir: str | None = None, manual_dir: str | None = None):
  """Builds the dataset if not already prepared (never downloads); returns the builder."""
  import tensorflow_datasets as tfds

  builder = get_builder(name, config, data_dir)
  dl_config = tfds.download.DownloadConfig(manual_dir=manual_dir or None)
  builder.download_and_prepare(download_config=dl_config)
  return builder


class NormalizedSource:
  """A random-access TFDS data source whose records are plain Python values (schema.normalize)."""

  def __init__(self, source: Sequence):
    self._source = source

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index: int) -> dict[str, Any]:
    from flamingo_jax.data import schema

    return schema.normalize(self._source[int(index)])


def data_source(name: str, config: Any, split: str, data_dir: str | None = None, manual_dir: str | None = None
                ) -> NormalizedSource:
  """Random-access records of a split of a builder, preparing it first if needed."""
  builder = prepare(name, config, data_dir, manual_dir)
  return NormalizedSource(builder.as_data_source(split=split))
