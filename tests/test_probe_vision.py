"""flamingo_jax.tools.probe_vision: the labels match the rendered scenes and the probe separates what features
hold from what they do not."""

import numpy as np

from flamingo_jax.tools import probe_vision


def test_probe_reads_the_background_from_pixel_colours_and_nothing_from_shuffled_labels():
    images, labels = probe_vision.world_scenes(300, 32)
    assert images.shape == (300, 32, 32, 3) and set(labels) == {"background", "colour", "kind"}
    # 'features' = each image's mean colour: the background fills most of the image, the creature little of it
    f = images.reshape(300, -1, 3).mean(1)
    y = labels["background"]
    real = probe_vision.linear_probe(f[:200], y[:200], f[200:], y[200:])
    assert real["test_accuracy"] > 0.95 and real["chance"] < 0.4, real
    shuffled = np.random.default_rng(0).permutation(y)
    control = probe_vision.linear_probe(f[:200], shuffled[:200], f[200:], shuffled[200:])
    assert control["test_accuracy"] < real["chance"] + 0.15, control
    # the creature's kind is not in the mean colour
    kind = probe_vision.linear_probe(f[:200], labels["kind"][:200], f[200:], labels["kind"][200:])
    assert kind["test_accuracy"] < kind["chance"] + 0.15, kind


def test_probe_and_supervised_ceiling_on_a_saved_tower(tmp_path):
    import jax
    import jax.numpy as jnp

    from flamingo_jax.convert.store import Converted, save_converted
    from flamingo_jax.models import vision_config
    from flamingo_jax.models.vision import build_vision

    cfg = vision_config("vit", "tiny", image_size=32, width=16, layers=1)
    import flax.linen as nn

    params = nn.meta.unbox(build_vision(cfg).init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))["params"])
    tower = save_converted(
        str(tmp_path / "tower"),
        Converted(kind="vision", params=jax.device_get(params), config=cfg, source={"test": "random"}))
    out = probe_vision.probe([tower], n_images=240)[tower]
    assert set(out) == {"background", "colour", "kind"}
    # even a random tower's features carry the background's colour; their kind probe stays near chance
    assert out["background"]["test_accuracy"] > 0.9 and out["background"]["n_test"] == 80, out
    # the supervised path trains the architecture: on the (easy) background labels it learns them
    images, labels = probe_vision.world_scenes(240, 32)
    ceiling = probe_vision.supervised_ceiling(tower, images, labels["background"], 160, steps=150, lr=3e-3)
    assert ceiling["test_accuracy"] > 0.9 and ceiling["steps"] == 150, ceiling
