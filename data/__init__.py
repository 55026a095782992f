"""TFDS dataset builders of flamingo_jax (installed as the package `flamingo_jax_datasets`).

One folder per builder, each with dummy_data/ for its test. Import a builder module to register it with
TFDS; flamingo_jax.data.builders finds them whether installed or in a source checkout.
"""
