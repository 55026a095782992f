"""Flamingo-80B (paper Tables 4-5). Arg knobs: xattn_every, scan_layers, vision (e.g. nfnet:F6, vit:L/14)."""

import ml_collections

from flamingo_jax import configs
from flamingo_jax.data.config import default_data_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    a = configs.parse_arg(arg, xattn_every=configs.PAPER_SIZES["80b"]["xattn_every"], scan_layers=True,
                          vision="nfnet:F6")
    config = ml_collections.ConfigDict()
    config.model = configs.paper_model_config("80b", xattn_every=a.xattn_every, scan_layers=a.scan_layers,
                                              vision=a.vision)
    config.seed = 0
    data = default_data_config()
    data.image_size = config.model.vision.image_size
    # The paper's ablation batches (M3W 256, image-text pairs 512, video 64); final models train 500k steps.
    for name, batch in (("m3w", 256), ("align", 512), ("ltip", 512), ("vtp", 64)):
        data.datasets[name].batch_size = batch
    configs.add_training(config, data, total_steps=500_000, log_every=100, warmup_steps=5000)
    return configs.finalize(config)
