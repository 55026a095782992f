"""Flamingo-3B (paper Tables 4-5). Arg knobs: xattn_every, scan_layers, vision (e.g. nfnet:F6, vit:L/14)."""

import ml_collections

from flamingo_jax import configs


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    a = configs.parse_arg(arg, xattn_every=configs.PAPER_SIZES["3b"]["xattn_every"], scan_layers=True,
                          vision="nfnet:F6")
    config = ml_collections.ConfigDict()
    config.model = configs.paper_model_config("3b", xattn_every=a.xattn_every, scan_layers=a.scan_layers,
                                              vision=a.vision)
    config.seed = 0
    return configs.finalize(config)
