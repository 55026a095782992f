"""Importers of pretrained weights: HuggingFace LMs and vision towers, open_clip ViTs, OpenFlamingo.

    from flamingo_jax.convert import convert_hf, convert_openflamingo, save_converted, load_converted
    save_converted("/out/lm", convert_hf("/ckpts/mpt-7b"))
    params, lm_cfg = load_converted("/out/lm")        # the `lm` subtree and config.model.lm

CLI: `python -m flamingo_jax.convert hf --src DIR --out DIR`,
`python -m flamingo_jax.convert open_clip --src FILE --out DIR` and
`python -m flamingo_jax.convert openflamingo --checkpoint FILE --lm DIR --vision FILE --out DIR`.
Reading safetensors needs no torch; `.bin` / `.pt` files need torch. Unknown or unused weight names raise
UnusedWeightsError listing them.
"""

from flamingo_jax.convert.hf import convert_hf, convert_open_clip
from flamingo_jax.convert.openflamingo import convert_openflamingo
from flamingo_jax.convert.store import (Converted, load_converted, params_fingerprint, read_manifest, save_converted)
from flamingo_jax.convert.weights import ConversionError, UnusedWeightsError

__all__ = [
    "ConversionError", "Converted", "UnusedWeightsError", "convert_hf", "convert_open_clip", "convert_openflamingo",
    "load_converted", "params_fingerprint", "read_manifest", "save_converted"
]
