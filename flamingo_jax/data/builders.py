"""Finding, preparing and reading the TFDS dataset builders shipped as `flamingo_jax_datasets`.

The builders live in the repository's `data/` folder, installed as the package `flamingo_jax_datasets`
(setup.py: package_dir={'flamingo_jax_datasets': 'data'}). From a source checkout that is not installed,
the folder is found next to the `flamingo_jax` package and registered under the same name, so a builder
is always imported under ONE module name (TFDS registers a builder class once per name).

Every builder is prepared in the array_record format, so its splits are random-access data sources that
grain reads by index (exact resume, see pipeline.py). `prepare` writes what a build skipped and repaired
(common.FileBuilder's tallies) to <prepared dir>/prepare_report.json; `python -m flamingo_jax.data.prepare`
prepares a config's datasets ahead of training. A multi-process run prepares on process 0 only, the others
wait at a barrier (data_source).
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import logging
import os
import sys
from pathlib import Path
from types import ModuleType
from typing import Any, Sequence

import flamingo_jax
from flamingo_jax import files

PACKAGE = "flamingo_jax_datasets"

# Builder name -> module inside the package.
BUILDERS = {
    name: name
    for name in (
        "flamingo_world",
        # training sources from local files
        "interleaved_generic",
        "mmc4",
        "obelics",
        "image_text_pairs",
        "video_text_frames",
        # evaluation sets from their official files
        "coco_karpathy",
        "flickr30k",
        "vqav2",
        "okvqa",
        "vizwiz",
        "textvqa",
        "hateful_memes",
        "msvd_qa",
        "vatex",
        # the paper's other held-out benchmarks
        "visdial",
        "youcook2",
        "msrvtt_qa",
        "ivqa",
        "rareact",
        "nextqa",
        "star",
    )
}


def datasets_package() -> ModuleType:
    """The imported `flamingo_jax_datasets` package (installed, or the checkout's data/ folder)."""
    if PACKAGE in sys.modules:
        return sys.modules[PACKAGE]
    local = Path(flamingo_jax.__file__).resolve().parent.parent / "data" / "__init__.py"
    if local.exists():
        spec = importlib.util.spec_from_file_location(PACKAGE, local, submodule_search_locations=[str(local.parent)])
        module = importlib.util.module_from_spec(spec)
        sys.modules[PACKAGE] = module
        spec.loader.exec_module(module)
        return module
    return importlib.import_module(PACKAGE)


def builder_module(name: str) -> ModuleType:
    if name not in BUILDERS:
        raise ValueError(f"unknown dataset builder {name!r}; available: {sorted(BUILDERS)}")
    datasets_package()
    return importlib.import_module(f"{PACKAGE}.{BUILDERS[name]}")


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
        config = tfds.core.BuilderConfig(name=config, description=f"{name} prepared from its own manual dir")
    return cls(config=config or None, data_dir=data_dir or None, file_format="array_record", **kwargs)


REPORT = "prepare_report.json"


def is_prepared(builder) -> bool:
    return os.path.exists(os.path.join(builder.data_dir, "dataset_info.json"))


def prepare(name: str, config: Any = None, data_dir: str | None = None, manual_dir: str | None = None):
    """Builds the dataset if not already prepared (never downloads); returns the builder. A build writes its
    report (records written, skipped and repaired per reason, per split) to <builder.data_dir>/REPORT."""
    import tensorflow_datasets as tfds

    builder = get_builder(name, config, data_dir)
    if is_prepared(builder):
        return builder
    dl_config = tfds.download.DownloadConfig(manual_dir=manual_dir or None)
    builder.download_and_prepare(download_config=dl_config)
    tallies = getattr(builder, "tallies", None)
    if tallies:
        splits = {split: dict(sorted(t.items())) for split, t in tallies.items()}
        report = {
            "builder": name, "config": builder.builder_config.name if builder.builder_config else "", "splits": splits
        }
        files.write_json(os.path.join(builder.data_dir, REPORT), report, indent=1)
        skipped = {s: {k: v for k, v in t.items() if k.startswith("skipped/")} for s, t in splits.items()}
        logging.warning("prepared %s in %s; skipped %s (details in %s)", name, builder.data_dir, skipped, REPORT)
    return builder


def read_report(builder) -> dict:
    """The prepare_report.json of a prepared builder ({} for builders that keep no tallies, e.g. the world)."""
    path = os.path.join(builder.data_dir, REPORT)
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        return json.load(f)


class NormalizedSource:
    """A random-access TFDS data source whose records are plain Python values (schema.normalize)."""

    def __init__(self, source: Sequence):
        self._source = source

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index: int) -> dict[str, Any]:
        from flamingo_jax.data import schema

        return schema.normalize(self._source[int(index)])


def barrier(name: str) -> None:
    """All processes of a multi-process JAX run meet here (jax.distributed must be initialised)."""
    from jax.experimental import multihost_utils

    multihost_utils.sync_global_devices(name)


def data_source(name: str, config: Any, split: str, data_dir: str | None = None, manual_dir: str | None = None,
                process_index: int = 0, process_count: int = 1) -> NormalizedSource:
    """Random-access records of a split of a builder, preparing it first if needed.

    With several processes, process 0 prepares and the others wait at a barrier, then read what it wrote:
    preparing on every process would race on the same files (and multiply the work). Every process calls
    this for the same datasets in the same order (the mixture does), as a barrier needs."""
    if process_count > 1:
        if process_index == 0:
            prepare(name, config, data_dir, manual_dir)
        barrier(f"flamingo_jax_prepare_{name}_{config}_{split}")
        builder = get_builder(name, config, data_dir)
        if not is_prepared(builder):
            raise FileNotFoundError(f"{name} ({config}) is not prepared in {builder.data_dir} after process 0 prepared "
                                    "it: config.data.data_dir must be a directory every process sees (shared or GCS); "
                                    "or prepare it first with python -m flamingo_jax.data.prepare")
    else:
        builder = prepare(name, config, data_dir, manual_dir)
    return NormalizedSource(builder.as_data_source(split=split))
