"""Flamingo-80B (paper Tables 4-5) on the paper's mixture; final models train 500k steps.

Arg knobs: xattn_every, scan_layers, vision (e.g. nfnet:F6, vit:L/14), manual_dir, data_dir, tokenizer
(real datasets: flamingo_jax.configs.paper_experiment).
"""

import ml_collections

from flamingo_jax import configs


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    return configs.paper_experiment("80b", arg)
