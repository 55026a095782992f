"""The world-scale baseline: the model and mixture that `flamingo_jax.reproduce` trains and that every row of
the world-scale ablation tables (experiments/ablations.py) modifies.

    python -m flamingo_jax.reproduce --workdir DIR                      # uses this file
    python -m flamingo_jax.train --config experiments/world.py --workdir DIR --config.pretrained.vision=...

It is experiments/tiny.py with a 4-layer LM (so that xattn 'every 2nd / every 4th / single in the middle' are
different placements), 128-token M3W windows (room for 8-shot prompts), a larger world (`scale`: its eval sets then hold 100 caption / VQA queries and 50 video
queries) and `batch` examples per dataset, trained for `steps` accumulated updates.
Arg knobs: steps, lm_layers, warmup, lr, scale, batch, m3w_len (M3W window, tokens).
Pretrained towers: `reproduce` and `ablate` fill config.pretrained with towers they pretrain on the world.
"""

import ml_collections

from flamingo_jax import configs


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    a = configs.parse_arg(arg, steps=600, lm_layers=4, warmup=30, lr=1e-3, scale=0.5, batch=4, m3w_len=128)
    tiny = _load_tiny()
    with tiny.unlocked():
        tiny.model.lm.num_layers = a.lm_layers
        tiny.total_steps = a.steps
        tiny.log_every = max(a.steps // 30, 1)
        tiny.optimizer.warmup_steps = a.warmup
        tiny.optimizer.lr = a.lr
        tiny.checkpoint_every = max(a.steps // 4, 1)
        tiny.data.world.scale = a.scale
        for name in tiny.data.datasets:
            tiny.data.datasets[name].batch_size = a.batch
        # 8-shot prompts run to ~130 tokens (tiny.py trains M3W windows of 64): train on windows that long
        tiny.data.datasets.m3w.seq_len = a.m3w_len
    return tiny


def _load_tiny() -> ml_collections.ConfigDict:
    import importlib.util
    import os

    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tiny.py")
    spec = importlib.util.spec_from_file_location("_world_base_tiny", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()
