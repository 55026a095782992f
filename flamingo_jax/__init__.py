"""flamingo_jax: Flamingo-style visual language models in JAX/Flax (see README.md).

`flamingo_jax.generate(params, config, images, prompt, ...)` is flamingo_jax.inference.generate, imported on
first use (importing the package stays light: no JAX program is built until then)."""


def __getattr__(name):
    if name == "generate":
        from flamingo_jax.inference import generate

        return generate
    raise AttributeError(f"module 'flamingo_jax' has no attribute {name!r}")
