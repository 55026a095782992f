"""What a frozen vision tower sees: linear probes of the world's attributes on its features.

    python -m flamingo_jax.tools.probe_vision --tower DIR [--tower DIR ...] [--images 1500] [--image_size 32]
    python -m flamingo_jax.tools.probe_vision --tower DIR --supervised [--steps 1500]

For each converted vision tower (flamingo_jax.convert's layout, e.g. what `reproduce` pretrains into
DIR/pretrained/vision), renders `--images` single-creature scenes of the generated world, takes the tower's
features mean-pooled over its tokens, float32[N, D], standardises them and fits a multinomial logistic
regression (softmax over the classes, L2-regularised, full-batch Adam) on two thirds of the scenes, then
prints JSON: {tower: {attribute: {test_accuracy, train_accuracy, chance, classes, n_train, n_test}}} for the
background, the creature's colour and the creature's kind. `chance` is the test share of the most frequent
class. --supervised instead trains each tower's ARCHITECTURE from random init, with a linear head on its
mean-pooled features, on the kind labels of the same training scenes (Adam, batches of 64): the ceiling a
tower of that shape reaches at that resolution when it is told what to see. Flamingo can only read from a
frozen tower what its features hold: the world's tasks need the kind
(captions name it, knowledge questions ask about it), so a tower whose kind probe sits at chance caps them.

Written by hand (a few lines of optax) because the probe is a diagnostic of this repo's towers and
scikit-learn is only a test dependency.
"""

from __future__ import annotations

import argparse
import io
import json
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from PIL import Image

from flamingo_jax.data.world import generate, lexicon, scenes

ATTRIBUTES = ("background", "colour", "kind")


def world_scenes(n: int, image_size: int, seed: int = 0) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """n single-creature scenes: images float32[n, S, S, 3] in [0, 1] and labels {attribute: int32[n]}."""
    world = generate.World(generate.WorldConfig(seed=seed, image_size=image_size))
    rng = np.random.default_rng([seed, 7])
    bgs, colours = list(lexicon.BACKGROUNDS), list(lexicon.COLOURS)
    images, labels = [], {a: [] for a in ATTRIBUTES}
    for _ in range(n):
        scene = scenes.sample_scene(rng, world.config.n_entities, n_objects=1)
        png = world.image(scene, generate._MediaRng(rng, True))
        images.append(np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), np.float32) / 255.0)
        labels["background"].append(bgs.index(scene.bg))
        labels["colour"].append(colours.index(scene.objs[0].colour))
        labels["kind"].append(scene.objs[0].entity)
    return np.stack(images), {a: np.asarray(v, np.int32) for a, v in labels.items()}


def linear_probe(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray, *, l2: float = 1e-3,
                 steps: int = 500, lr: float = 0.05) -> dict:
    """Softmax regression on standardised features x [N, D] -> accuracies on train and test."""
    mean, std = x_train.mean(0), x_train.std(0) + 1e-6
    xtr, xte = (x_train - mean) / std, (x_test - mean) / std
    k = int(max(y_train.max(), y_test.max())) + 1
    params = dict(w=jnp.zeros((xtr.shape[1], k)), b=jnp.zeros((k, )))
    opt = optax.adam(lr)

    def loss(p):
        logits = xtr @ p["w"] + p["b"]
        return optax.softmax_cross_entropy_with_integer_labels(logits, y_train).mean() + l2 * jnp.sum(p["w"]**2)

    @jax.jit
    def fit(p):

        def step(carry, _):
            p, s = carry
            g = jax.grad(loss)(p)
            u, s = opt.update(g, s, p)
            return (optax.apply_updates(p, u), s), None

        return jax.lax.scan(step, (p, opt.init(p)), None, length=steps)[0][0]

    params = fit(params)
    acc = lambda x, y: float(np.mean(np.asarray(jnp.argmax(x @ params["w"] + params["b"], -1)) == y))  # noqa: E731
    return _report(acc(xtr, y_train), acc(xte, y_test), y_test, k, len(y_train))


def _report(train_accuracy: float, test_accuracy: float, y_test: np.ndarray, classes: int, n_train: int,
            **extra) -> dict:
    """One probe's JSON record; chance is the test share of the most frequent class."""
    return dict(train_accuracy=round(train_accuracy, 4), test_accuracy=round(test_accuracy, 4),
                chance=round(float(np.bincount(y_test).max() / len(y_test)),
                             4), classes=classes, n_train=n_train, n_test=len(y_test), **extra)


def tower_features(tower: str, images: np.ndarray, batch: int = 256) -> np.ndarray:
    """Mean-pooled features float32[N, D] of a converted vision tower on images float32[N, S, S, 3] (what
    flamingo_jax.pretrain.contrastive.embed computes, jitted once and run in batches: the reported probe
    figures were measured this way)."""
    from flamingo_jax.convert.store import load_converted
    from flamingo_jax.models.vision import build_vision

    params, config = load_converted(tower)
    model = build_vision(config)
    apply = jax.jit(lambda x: model.apply({"params": params}, x).mean(axis=1))
    return np.concatenate([np.asarray(apply(jnp.asarray(images[i:i + batch]))) for i in range(0, len(images), batch)])


def supervised_ceiling(tower: str, images: np.ndarray, labels: np.ndarray, cut: int, steps: int = 1500,
                       lr: float = 1e-3, batch: int = 64, seed: int = 0) -> dict:
    """Trains the architecture of `tower` (random init) + a linear head on labels[:cut]; accuracies."""
    from flamingo_jax.convert.store import read_manifest
    from flamingo_jax.models.vision import build_vision
    import ml_collections

    model = build_vision(ml_collections.ConfigDict(read_manifest(tower)["config"]))
    k = int(labels.max()) + 1
    x = jnp.asarray(images)
    enc = model.init(jax.random.PRNGKey(seed), x[:1])["params"]
    width = model.apply({"params": enc}, x[:1]).shape[-1]
    params = dict(enc=enc, w=jnp.zeros((width, k)), b=jnp.zeros((k, )))
    opt = optax.adamw(lr, weight_decay=1e-4)

    def logits(p, xb):
        return model.apply({"params": p["enc"]}, xb).mean(axis=1) @ p["w"] + p["b"]

    @jax.jit
    def step(p, s, xb, yb):
        loss = lambda q: optax.softmax_cross_entropy_with_integer_labels(logits(q, xb), yb).mean()  # noqa: E731
        u, s = opt.update(jax.grad(loss)(p), s, p)
        return optax.apply_updates(p, u), s

    state = opt.init(params)
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        idx = rng.integers(0, cut, batch)
        params, state = step(params, state, x[idx], jnp.asarray(labels[idx]))
    predict = jax.jit(lambda xb: jnp.argmax(logits(params, xb), -1))
    acc = lambda a, b: float(
        np.mean(
            np.concatenate([
                np.asarray(predict(x[i:min(i + 256, b)]))  # noqa: E731
                for i in range(a, b, 256)
            ]) == labels[a:b]))
    return _report(acc(0, cut), acc(cut, len(labels)), labels[cut:], k, cut, steps=steps)


def probe(towers: Sequence[str], n_images: int = 1500, image_size: int = 32, seed: int = 0, supervised: bool = False,
          steps: int = 1500) -> dict:
    images, labels = world_scenes(n_images, image_size, seed)
    cut = 2 * n_images // 3
    out = {}
    for tower in towers:
        if supervised:
            out[tower] = {
                "kind (supervised ceiling)": supervised_ceiling(tower, images, labels["kind"], cut, steps, seed=seed)
            }
            continue
        f = tower_features(tower, images)
        out[tower] = {a: linear_probe(f[:cut], y[:cut], f[cut:], y[cut:]) for a, y in labels.items()}
    return out


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tower", action="append", required=True, help="converted vision tower directory")
    ap.add_argument("--images", type=int, default=1500, help="single-creature scenes rendered")
    ap.add_argument("--image_size", type=int, default=32, help="pixels (the world config's data.image_size)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--supervised", action="store_true", help="train each tower's architecture on kind labels")
    ap.add_argument("--steps", type=int, default=1500, help="--supervised: Adam steps")
    a = ap.parse_args(argv)
    print(json.dumps(probe(a.tower, a.images, a.image_size, a.seed, a.supervised, a.steps), indent=1))


if __name__ == "__main__":
    main()
