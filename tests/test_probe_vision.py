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
