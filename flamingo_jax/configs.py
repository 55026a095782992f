"""Config helpers shared by experiments/*.py: the paper's model presets and `get_config(arg)` parsing.

An experiment file exposes `get_config(arg=None)`; sweepable knobs come from the arg string
(`--config experiments/flamingo_3b.py:xattn_every=4,scan_layers=false`) and any field from the command line
(`--config.model.lm.num_layers=2`). Configs are locked: an unknown key is an error, never a silent no-op.
"""

from __future__ import annotations

import copy
from typing import Any

import ml_collections

from flamingo_jax import guard, optim
from flamingo_jax.models import lm_config, model_config, resampler_config, vision_config, xattn_config

# Paper Tables 4-5: frozen LM shapes and the cross-attention interval (every n-th block from the first).
PAPER_SIZES = {
    "3b": dict(num_layers=24, d_model=2048, num_heads=16, xattn_every=1),
    "9b": dict(num_layers=40, d_model=4096, num_heads=32, xattn_every=4),
    "80b": dict(num_layers=80, d_model=8192, num_heads=64, xattn_every=7),
}


def _parse_value(text: str, default: Any) -> Any:
    if isinstance(default, bool):
        if text.lower() not in ("true", "false", "1", "0"):
            raise ValueError(f"expected a boolean, got {text!r}")
        return text.lower() in ("true", "1")
    if isinstance(default, int):
        return int(text)
    if isinstance(default, float):
        return float(text)
    return text


def parse_arg(arg: str | None, **defaults: Any) -> ml_collections.ConfigDict:
    """'a=1,b=x' -> ConfigDict over `defaults`, values typed like the defaults. Unknown keys raise."""
    out = ml_collections.ConfigDict(defaults)
    for item in filter(None, (arg or "").split(",")):
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep:
            raise ValueError(f"config arg {item!r} is not key=value")
        if key not in defaults:
            raise ValueError(f"unknown config arg {key!r}; known: {sorted(defaults)}")
        out[key] = _parse_value(value.strip(), defaults[key])
    return out


def paper_model_config(size: str, *, xattn_every: int | None = None, scan_layers: bool = True, vocab_size: int = 32000,
                       vision: str = "nfnet:F6", image_size: int = 320,
                       dtype: str = "bfloat16") -> ml_collections.ConfigDict:
    """config.model for Flamingo-3B/9B/80B (paper Tables 4-5).

    The LM is Chinchilla-like: pre-norm RMSNorm, GELU FFW of width 4D with two matrices, rotary positions
    (the stand-in for relative positions), untied 32k embeddings. Cross-attention keys/values project from
    the resampler width (1536, the NFNet's last stage) rather than from the LM width: the visual tokens are
    1536-wide and projecting from them is the smaller choice (paper Section 2.1 and Appendix B.1.2: the
    Perceiver Resampler's outputs are the keys and values of every GATED XATTN-DENSE layer). Precision as in
    the paper: bf16 activations and frozen params, fp32 trainable params.
    """
    if size not in PAPER_SIZES:
        raise ValueError(f"unknown Flamingo size {size!r}: choose one of {sorted(PAPER_SIZES)}")
    s = PAPER_SIZES[size]
    lm = lm_config("chinchilla", vocab_size=vocab_size, d_model=s["d_model"], num_layers=s["num_layers"],
                   num_heads=s["num_heads"], max_len=2048, scan_layers=scan_layers)
    kind, _, vsize = vision.partition(":")
    vis = vision_config(kind, vsize, image_size=image_size if kind == "nfnet" else 224)
    resampler = resampler_config("perceiver", depth=6, num_heads=16, num_latents=64, max_frames=8)
    xattn = xattn_config("gated", every=xattn_every or s["xattn_every"])
    return model_config(vis, lm, resampler, xattn, dtype=dtype, frozen_param_dtype="bfloat16",
                        trainable_param_dtype="float32")


def tiny_model_config(vocab_size: int = 512) -> ml_collections.ConfigDict:
    """A CPU-sized Flamingo used by tests and the embedded default (fp32 everywhere)."""
    lm = lm_config("chinchilla", vocab_size=vocab_size, d_model=64, num_layers=2, num_heads=4, max_len=512)
    vis = vision_config("vit", "tiny", image_size=32)
    resampler = resampler_config("perceiver", depth=2, num_heads=2, num_latents=8, max_frames=8)
    xattn = xattn_config("gated", every=1, num_heads=4)
    return model_config(vis, lm, resampler, xattn)


def add_training(config: ml_collections.ConfigDict, data: ml_collections.ConfigDict, *, total_steps: int,
                 log_every: int, warmup_steps: int = 5000) -> ml_collections.ConfigDict:
    """The trainer's fields (flamingo_jax.train), with the paper's optimizer settings.

    mesh: axis sizes for data / fsdp / model (-1 = the rest of the devices); mesh.dcn: how many slices
    (processes where devices have no slice_index) each axis spans, e.g. dcn.data=2 for data parallelism
    across two slices; mesh.allow_split_physical_axes lets an axis take part of a TPU torus dimension
    (flamingo_jax.sharding.make_mesh). trainable: regexes over param
    paths ('lm/.*' unfreezes the LM, ablation viii). microbatches: per dataset, splits of the batch run
    under lax.scan. pretrained: converted checkpoints for frozen subtrees (flamingo_jax.convert); ''
    initialises randomly. data: config.data (flamingo_jax.data.config), batch sizes are global.
    checkpoint_*: flamingo_jax.checkpoint: save every N steps (0: only at the end and on preemption) and/or
    every M minutes (0: off); keep the newest K plus every keep_every-th step (0: none); asynchronous saves.
    loss.normalization: 'sequence' (the paper's objective, Section 3.3 Equation 2: per dataset the masked
    token NLL summed over each sequence, averaged over the batch's sequences) or 'token' (per dataset the mean
    over its loss tokens); see flamingo_jax.train_step. evaluation: the open-ended decoding that
    flamingo_jax.evaluate, reproduce and ablate use unless their flags say otherwise."""
    config.total_steps = total_steps
    config.log_every = log_every
    config.mesh = ml_collections.ConfigDict(
        dict(data=-1, fsdp=1, model=1, dcn=dict(data=1, fsdp=1, model=1), allow_split_physical_axes=False))
    config.trainable = list(optim.DEFAULT_TRAINABLE)
    config.optimizer = optim.optimizer_config(warmup_steps=warmup_steps)
    config.data = data
    link_image_size(config)
    config.microbatches = ml_collections.ConfigDict({name: 1 for name in data.datasets})
    config.loss = ml_collections.ConfigDict(dict(normalization="sequence"))
    config.guard = guard.guard_config()  # health check, loss spikes, rollback (flamingo_jax.guard)
    config.pretrained = ml_collections.ConfigDict(dict(vision="", lm=""))
    config.checkpoint_every = 1000
    config.checkpoint_every_minutes = 0.0
    config.checkpoint_keep = 3
    config.checkpoint_keep_every = 0
    config.checkpoint_async = True
    config.checkpoint_checksums = True  # per-array checksums saved with each step, verified on restore
    # Open-ended decoding of the few-shot evaluation (flamingo_jax.evaluate): beam search of width 3 (Section 4:
    # beam 3, stop at the first <EOC>); the paper states no length penalty. Beam scores are
    # sum log p / length ** length_penalty.
    config.evaluation = ml_collections.ConfigDict(dict(num_beams=3, length_penalty=0.0))
    return config


def link_image_size(config: ml_collections.ConfigDict) -> None:
    """config.data.image_size becomes a reference to config.model.vision.image_size: the pipeline resizes
    images to the vision encoder's input resolution (paper Section 3.1, Appendix B.1.2: 320 for the NFNet-F6,
    224 for a CLIP ViT), so the encoder's field is the one source of truth and an override of either field
    (`--config.model.vision.image_size=288`) sets both. Call it again after replacing config.model.vision
    (config unlocked)."""
    if "image_size" in config.data:  # replaced, not set: setting a reference field would chain the references
        del config.data["image_size"]
    config.data.image_size = config.model.vision.get_ref("image_size")


def paper_experiment(size: str, arg: str | None = None) -> ml_collections.ConfigDict:
    """The full experiment config of Flamingo-3B/9B/80B on the paper's mixture with its ablation batches
    (M3W 256, image-text pairs 512, video 64). Arg knobs: xattn_every, scan_layers, vision, remat (model.remat:
    'full' by default here, since at these sizes activation memory is what limits the batch per chip; 'dots',
    'none'); manual_dir (the
    real datasets' files: flamingo_jax.data.config.real_data_config's layout; '' = the generated world),
    data_dir (prepared TFDS datasets), tokenizer (a local HuggingFace tokenizer dir of the imported LM)."""
    from flamingo_jax.data.config import default_data_config, real_data_config

    a = parse_arg(arg, xattn_every=PAPER_SIZES[size]["xattn_every"], scan_layers=True, vision="nfnet:F6", remat="full",
                  manual_dir="", data_dir="", tokenizer="")
    config = ml_collections.ConfigDict()
    config.model = paper_model_config(size, xattn_every=a.xattn_every, scan_layers=a.scan_layers, vision=a.vision)
    config.model.remat = a.remat
    config.seed = 0
    data = (real_data_config(a.manual_dir, a.data_dir, a.tokenizer) if a.manual_dir else default_data_config())
    for name, batch in (("m3w", 256), ("align", 512), ("ltip", 512), ("vtp", 64)):
        data.datasets[name].batch_size = batch
    add_training(config, data, total_steps=500_000, log_every=100, warmup_steps=5000)
    return finalize(config)


def finalize(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Locks a config so that setting an unknown field raises."""
    config.lock()
    return config


def seeded(config: ml_collections.ConfigDict, seed: int) -> ml_collections.ConfigDict:
    """The config of seed index `seed`: model init and data order both shift (a copy; `config` is kept)."""
    config = copy.deepcopy(config)
    with config.unlocked():
        config.seed = int(config.seed) + seed
        config.data.seed = int(config.data.seed) + seed
    config.lock()
    return config
