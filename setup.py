"""The package list for setuptools; all metadata is in pyproject.toml.

Two folders of the checkout are installed under other names, which pyproject.toml's package finder cannot
express: the TFDS dataset builders in data/ as `flamingo_jax_datasets`, and the experiment configs in
experiments/ as `flamingo_jax.experiments` (so a wheel runs `--config experiments/tiny.py` outside a checkout:
flamingo_jax.configs.find_config).
"""

from setuptools import find_packages, setup

setup(
    packages=find_packages(include=["flamingo_jax", "flamingo_jax.*"])
    + ["flamingo_jax.experiments", "flamingo_jax_datasets"]
    + ["flamingo_jax_datasets." + p for p in find_packages(where="data")],
    package_dir={"flamingo_jax.experiments": "experiments", "flamingo_jax_datasets": "data"},
)
