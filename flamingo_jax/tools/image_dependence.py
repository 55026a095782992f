"""How much a trained Flamingo reads its images: each training dataset's loss with its own images against the
same batch with every row's images taken from the next row.

    python -m flamingo_jax.tools.image_dependence --config experiments/world.py:ARGS --checkpoint DIR/train \
        [--batches 8] [--config.pretrained.vision=...]

For `--batches` batches of every dataset of config.data's mixture (the training iterator from its start), the
checkpoint's model scores the next-token NLL of the loss tokens twice: with the batch as it is, and with
images float32[B, T_img, F, H, W, C] rolled by one along B (row b reads row b+1's images; image_mask, tokens
and media_index stay, so every token attends to the same slots, now holding another example's pixels).
Prints JSON {dataset: {nll_own, nll_rolled, gap, tokens}}: nats per loss token, gap = rolled - own. A gap near
0 says the text is predicted as well from another example's images: the model (or the data) does not use them.
That is the first thing to know when a model's scores do not depend on what it is shown.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np


def roll_images(batch: dict[str, Any]) -> dict[str, Any]:
    """The batch with row b's images replaced by row (b + 1) % B's; everything else unchanged."""
    return dict(batch, images=np.roll(np.asarray(batch["images"]), -1, axis=0))


def image_dependence(config: ml_collections.ConfigDict, checkpoint_dir: str, batches: int = 8) -> dict:
    """{dataset: {'nll_own', 'nll_rolled', 'gap', 'tokens'}} of the newest checkpoint in checkpoint_dir."""
    from flamingo_jax import checkpoint, models, sharding
    from flamingo_jax.train import make_data_iterator
    from flamingo_jax.train_state import param_targets
    from flamingo_jax.train_step import MODEL_INPUTS, cross_entropy

    model = models.build(config.model)
    mesh = sharding.make_mesh(dict(data=1, fsdp=1, model=1))
    params, _ = checkpoint.restore_params(os.path.abspath(checkpoint_dir), config,
                                          param_targets(model, config.model, mesh))

    @jax.jit
    def nll(params, batch):
        logits = model.apply({"params": params}, batch["tokens"], batch["images"], batch["image_mask"],
                             batch["media_index"])
        return cross_entropy(logits, batch["targets"], batch["loss_mask"])

    data = make_data_iterator(config, 0, 1)
    sums: dict[str, np.ndarray] = {}
    for _ in range(batches):
        for name, batch in next(data).items():
            batch = {k: batch[k] for k in (*MODEL_INPUTS, "targets", "loss_mask")}
            own = nll(params, jax.tree.map(jnp.asarray, batch))
            rolled = nll(params, jax.tree.map(jnp.asarray, roll_images(batch)))
            s = sums.setdefault(name, np.zeros(3))
            s += (float(own[0]), float(rolled[0]), float(own[1]))
    out = {}
    for name, (own, rolled, tokens) in sums.items():
        t = max(tokens, 1.0)
        out[name] = dict(nll_own=round(own / t, 4), nll_rolled=round(rolled / t, 4), gap=round((rolled - own) / t, 4),
                         tokens=int(tokens))
    return out


def main(argv) -> None:
    del argv
    from absl import flags

    f = flags.FLAGS
    print(json.dumps(image_dependence(f.config, f.checkpoint, f.batches), indent=1))


if __name__ == "__main__":
    from absl import app, flags
    from ml_collections import config_flags

    config_flags.DEFINE_config_file("config", None, "experiment config file[:arg]", lock_config=True)
    flags.DEFINE_string("checkpoint", None, "training workdir whose newest checkpoint is measured")
    flags.DEFINE_integer("batches", 8, "batches of each dataset")
    flags.mark_flags_as_required(["config", "checkpoint"])
    app.run(main)
