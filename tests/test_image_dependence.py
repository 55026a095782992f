"""flamingo_jax.tools.image_dependence: the control swaps only the pixels, and the report is per dataset."""

import math

import numpy as np

import tiny
from flamingo_jax.tools import image_dependence


def test_roll_images_gives_each_row_the_next_rows_pixels_and_keeps_the_text():
    batch = dict(images=np.arange(3 * 2, dtype=np.float32).reshape(3, 2, 1, 1, 1, 1),
                 tokens=np.arange(12).reshape(3, 4), image_mask=np.array([[1, 0], [1, 1], [1, 1]], bool))
    rolled = image_dependence.roll_images(batch)
    np.testing.assert_array_equal(rolled["images"][0], batch["images"][1])
    np.testing.assert_array_equal(rolled["images"][2], batch["images"][0])
    assert rolled["tokens"] is batch["tokens"] and rolled["image_mask"] is batch["image_mask"]


def test_image_dependence_of_a_trained_checkpoint(tmp_path):
    from flamingo_jax import train

    # without tanh gates (ablation iii) the cross-attention reads the images from the first step, so other
    # images change the loss; a gated model one step from its zero-initialised gates barely reads them
    gap = {}
    for gating in (False, True):
        config = tiny.tiny_train_config(total_steps=1)
        config.model.xattn.gating = gating
        train.train(config, str(tmp_path / f"run{gating}"))
        out = image_dependence.image_dependence(config, str(tmp_path / f"run{gating}"), batches=2)
        assert set(out) == {"m3w", "align"}
        for name, r in out.items():
            assert r["tokens"] > 0 and math.isfinite(r["nll_own"]) and math.isfinite(r["nll_rolled"]), (name, r)
            assert abs(r["gap"] - (r["nll_rolled"] - r["nll_own"])) < 2e-4
        gap[gating] = max(abs(r["gap"]) for r in out.values())
    assert gap[False] > 1e-3 and gap[True] < gap[False] / 10, gap
