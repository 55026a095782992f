"""The checks a training run makes before it builds anything, each failing with one message that names the fix:
the config's values, the pretrained towers' architectures against the model config, and the data's vocabulary
against the frozen LM's."""

from __future__ import annotations

import os
from typing import Any

import ml_collections

from flamingo_jax import guard as guard_lib
from flamingo_jax.train_step import check_normalization


def check_config(config: ml_collections.ConfigDict) -> None:
    """The config errors a user can make, found before anything is built or written: ValueError, one line."""
    if config is None:
        raise ValueError("no config: pass --config experiments/<name>.py[:arg]")

    def positive(name: str, value, zero_ok: bool = False) -> None:
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0 or (value == 0 and not zero_ok):
            raise ValueError(f"config.{name} must be {'>= 0' if zero_ok else '> 0'}, not {value!r}")

    positive("total_steps", config.total_steps)
    positive("log_every", config.log_every)
    positive("checkpoint_every", config.get("checkpoint_every", 0), zero_ok=True)
    positive("checkpoint_every_minutes", config.get("checkpoint_every_minutes", 0.0), zero_ok=True)
    positive("checkpoint_keep", config.get("checkpoint_keep", 3))
    positive("checkpoint_keep_every", config.get("checkpoint_keep_every", 0), zero_ok=True)
    positive("optimizer.lr", config.optimizer.lr, zero_ok=True)
    check_normalization(config.loss.normalization)
    guard_lib.check(guard_lib.resolve(config))
    for name in config.data.mixture:
        if name not in config.data.datasets:
            raise ValueError(f"config.data.mixture names {name!r}, which config.data.datasets lacks")
        positive(f"data.datasets.{name}.batch_size", config.data.datasets[name].batch_size)
    for name, path in config.pretrained.items():
        if path and not os.path.exists(path):
            raise ValueError(f"config.pretrained.{name}: {path} does not exist (convert one with "
                             f"python -m flamingo_jax.convert, or set it to '' to initialise randomly)")
        if path:
            check_pretrained_architecture(name, path, config.model[name])


# The fields that fix a tower's parameter shapes; a converted tower must agree with the config on them.
ARCHITECTURE_FIELDS = ("kind", "family", "width", "layers", "heads", "patch_size", "image_size", "d_model",
                       "num_layers", "num_heads", "num_kv_heads", "d_ff", "vocab_size", "widths", "depths")


def check_pretrained_architecture(name: str, path: str, model_part: ml_collections.ConfigDict) -> None:
    """ValueError naming the first field where the converted tower at `path` (its config.json, written by
    flamingo_jax.convert) differs from config.model.<name>: e.g. an open_clip ViT-L/14 given to the paper
    configs' default NFNet-F6, which would otherwise fail later as a shape error deep in the restore."""
    from flamingo_jax.convert.store import read_manifest

    try:
        stored = read_manifest(path).get("config") or {}
    except (OSError, ValueError):
        return  # not a converted directory: the restore reports it
    stored = stored.get(name, stored) if isinstance(stored, dict) else {}
    for field in ARCHITECTURE_FIELDS:
        if field in stored and field in model_part:
            want, got = model_part[field], stored[field]
            if isinstance(want, (tuple, list)) or isinstance(got, (tuple, list)):
                want, got = list(want), list(got)
            if want != got:
                hint = (f" (e.g. add :vision={stored.get('kind')}:<size> to the config arg, as "
                        f"experiments/flamingo_*.py take vision=vit:L/14)" if name == "vision" else "")
                raise ValueError(f"config.pretrained.{name}: {path} holds a tower with {field}={got!r} but "
                                 f"config.model.{name}.{field} is {want!r}; use the config of the converted "
                                 f"tower{hint}")


def check_vocabulary(config: ml_collections.ConfigDict, data: Any) -> None:
    """The model's token ids and the frozen LM's against the data's vocabulary. An LM pretrained under another
    vocabulary reads every id as another token and nothing fails (the world LM read under a re-drawn world's
    vocabulary scored 6.45 nats per token against 0.79), so a mismatch is an error naming the fix. The LM
    pretraining records its vocabulary's fingerprint (flamingo_jax.pretrain.lm); converted LMs record none."""
    vocab = getattr(data, "vocab", None)
    if vocab is None:  # synthetic data: token ids only
        return
    m = config.model
    data.check_model_vocab(m.lm.vocab_size, m.image_token_id, m.eoc_token_id)
    path = config.pretrained.get("lm", "") if "pretrained" in config else ""
    if path:
        from flamingo_jax.convert.store import read_manifest

        want = (read_manifest(path).get("source") or {}).get("vocab_sha256")
        if want and want != vocab.fingerprint():
            raise ValueError(f"the frozen LM at {path} was pretrained under another vocabulary (fingerprint "
                             f"{want[:12]}..., config.data.vocab gives {vocab.fingerprint()[:12]}...): point "
                             "config.data.vocab at the vocabulary it was pretrained with, or pretrain the LM again")
