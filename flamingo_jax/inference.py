"""Inference on a trained or converted model: `generate(params, config, images, prompt)` -> text.

    import flamingo_jax
    params, config = flamingo_jax.inference.load("workdir/run")          # a training workdir
    print(flamingo_jax.generate(params, config, ["cat.png"], "<image>Output:"))

The prompt is text with `<image>` where each image sits (in order) and optionally `<EOC>`; it is tokenised as
the evaluation builds prompts (BOS, then each text piece with the vocabulary, the markers as their ids).
Images are loaded and preprocessed exactly as training's pipeline does (flamingo_jax.data.images: decode,
longest side to the model's image size with mean padding, [0, 1]). Decoding is evaluation's
(flamingo_jax.evaluation.decoding: the prompt prefilled once, cached visual keys/values, beam search or greedy),
stopping at `<EOC>` or EOS. The command line is flamingo_jax.infer.
"""

from __future__ import annotations

import os
import re
from typing import Any, Sequence

import jax
import ml_collections
import numpy as np

from flamingo_jax.data import images as image_lib
from flamingo_jax.data.vocab import EOC_TOKEN, IMAGE_TOKEN

_MARKERS = re.compile(f"({re.escape(IMAGE_TOKEN)}|{re.escape(EOC_TOKEN)})")


def load(workdir: str, step: int | None = None) -> tuple[dict, ml_collections.ConfigDict]:
    """(params as host arrays, the run's config) of a training workdir's newest intact checkpoint (or `step`):
    the trainable params of the step, the frozen ones from the workdir's store or the converted checkpoints it
    references, and the config the run was trained with (its checkpoint's meta item)."""
    from flamingo_jax.checkpoint import read_workdir

    params, config, _, _ = read_workdir(workdir, step)
    return params, config


def load_image(image: Any, size: int) -> np.ndarray:
    """A path, encoded bytes, or uint8[H, W, 3] -> float32[size, size, 3] in [0, 1], as training preprocesses."""
    if isinstance(image, (str, os.PathLike)):
        with open(image, "rb") as f:
            image = f.read()
    if isinstance(image, (bytes, bytearray)):
        image = image_lib.decode_image(bytes(image))
    return image_lib.resize_pad(np.asarray(image, np.uint8), size)


def encode_prompt(vocab, prompt: str) -> list[int]:
    """'<image>Output:' -> [BOS, <image>, ...ids of 'Output:'] (markers as their ids, text by the vocabulary)."""
    ids = [vocab.bos_id]
    for piece in _MARKERS.split(prompt):
        if piece == IMAGE_TOKEN:
            ids.append(vocab.image_id)
        elif piece == EOC_TOKEN:
            ids.append(vocab.eoc_id)
        elif piece:
            ids += vocab.encode(piece)
    return ids


def _model_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    return config.model if "model" in config else config


def generate(params: Any, config: ml_collections.ConfigDict, images: Sequence[Any], prompt: str, *, vocab=None,
             num_beams: int = 3, max_new_tokens: int = 20, min_new_tokens: int = 0, length_penalty: float = 0.0,
             return_details: bool = False):
    """The continuation of `prompt` (one `<image>` per entry of `images`, in order) as text.

    params: the model's param tree; config: a training config (its model and data; the vocabulary is
    config.data.vocab unless `vocab` is given) or a model config with `vocab`; images: paths, encoded bytes
    or uint8[H, W, 3] arrays. With return_details: {'text', 'tokens', 'score'} (score: the hypothesis'
    log-likelihood, length-normalised by length_penalty)."""
    from flamingo_jax import models
    from flamingo_jax.evaluation import decoding

    mc = _model_config(config)
    if vocab is None:
        if "data" not in config:
            raise ValueError("pass `vocab` (or a training config with its data section)")
        from flamingo_jax.data import mixture

        vocab = mixture.make_vocab(config.data)
    ids = encode_prompt(vocab, prompt)
    n_markers = ids.count(vocab.image_id)
    if n_markers != len(images):
        raise ValueError(f"the prompt has {n_markers} {IMAGE_TOKEN} markers for {len(images)} images")
    size = mc.vision.image_size
    pixels = np.stack([load_image(im, size) for im in images]) if images else np.zeros((0, size, size, 3), np.float32)
    n = max(len(images), 1)  # a text-only prompt still has one (masked) image slot
    batch = np.zeros((1, n, 1, size, size, 3), np.float32)
    batch[0, :len(images), 0] = pixels
    image_mask = np.zeros((1, n), bool)
    image_mask[0, :len(images)] = True
    toks, tmask = decoding.left_pad([ids], decoding.bucket(len(ids)), vocab.pad_id)
    dec = decoding.decoder_for(models.build(mc), pad_id=vocab.pad_id)
    gen = decoding.GenerationConfig(max_new_tokens=max_new_tokens, num_beams=num_beams, min_new_tokens=min_new_tokens,
                                    length_penalty=length_penalty, stop_ids=(vocab.eoc_id, vocab.eos_id),
                                    banned_ids=(vocab.image_id, ))
    visual = dec.encode(params, batch)
    out = jax.device_get(dec.generate(params, toks, tmask, visual, image_mask, gen))
    best = out["tokens"][0, 0, :out["lengths"][0, 0]].tolist()
    text = vocab.decode([t for t in best if t not in (vocab.eoc_id, vocab.eos_id)], markers=False).strip()
    if return_details:
        return dict(text=text, tokens=best, score=float(out["scores"][0, 0]))
    return text
