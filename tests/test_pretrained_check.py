"""A converted tower whose architecture differs from the config is refused before anything is built, naming
the field (the README's paper-scale recipe once loaded an open_clip ViT-L/14 into the default NFNet-F6)."""

from __future__ import annotations

import json

import pytest

from flamingo_jax import run_checks
from flamingo_jax.convert.store import FORMAT
from flamingo_jax.models import vision_config
from flamingo_jax.config_files import load_config


def _converted_vit(tmp_path, size: str) -> str:
    out = tmp_path / "vision"
    out.mkdir()
    config = json.loads(vision_config("vit", size).to_json_best_effort())
    (out / "config.json").write_text(
        json.dumps({"format": FORMAT, "kind": "vision", "subtree": "vision", "config": config}))
    return str(out)


def test_paper_config_refuses_a_vit_in_the_nfnet_slot_and_takes_it_with_vision_arg(tmp_path):
    vit = _converted_vit(tmp_path, "L/14")
    config = load_config("experiments/flamingo_9b.py")
    config.pretrained.vision = vit
    with pytest.raises(
            ValueError, match=r"config.pretrained.vision: .* holds a tower with kind='vit' but "
            r"config.model.vision.kind is 'nfnet'.*vision=vit:<size>"):
        run_checks.check_config(config)
    config = load_config("experiments/flamingo_9b.py:vision=vit:L/14")
    config.pretrained.vision = vit
    run_checks.check_config(config)  # the recipe's config arg: accepted
    config = load_config("experiments/flamingo_9b.py:vision=vit:B/16")
    config.pretrained.vision = vit
    with pytest.raises(ValueError, match="width=1024 but config.model.vision.width is 768"):
        run_checks.check_config(config)
