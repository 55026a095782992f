"""flamingo_jax: Flamingo-style visual language models in JAX/Flax (see README.md).

`flamingo_jax.generate(params, config, images, prompt, ...)` is flamingo_jax.inference.generate, imported on
first use (importing the package stays light: no JAX program is built until then).

TensorFlow, if anything imports it, is kept quiet and off the accelerators (flamingo_jax.tensorflow_guard)."""

from flamingo_jax import tensorflow_guard as _tensorflow_guard

_tensorflow_guard.install()


def __getattr__(name):
    if name == "generate":
        from flamingo_jax.inference import generate

        return generate
    raise AttributeError(f"module 'flamingo_jax' has no attribute {name!r}")
