"""flamingo_jax: Flamingo visual language models in JAX (train, evaluate, reproduce the paper's ablations)."""

from setuptools import find_packages, setup

RUNTIME = [
    "jax==0.10.2",
    "jaxlib==0.10.2",
    "flax==0.12.8",
    "optax==0.2.8",
    "orbax-checkpoint==0.12.8",
    "ml-collections==1.1.0",
    "clu==0.0.12",
    "chex==0.1.92",
    "absl-py==2.5.1",
    "numpy==2.4.6",
    "pillow==13.0.0",
    "matplotlib==3.11.2",
    "tensorboard==2.21.0",  # clu's metric writers need it
    "tensorflow==2.21.0",
    "tensorflow-datasets==4.9.10",
    "tensorflow-text==2.21.1",
    "seqio==0.0.20",
    "grain==0.2.18",
    "array-record==0.8.6",
    "sentencepiece==0.2.3",
    "importlib_resources==7.1.0",  # tensorflow-datasets needs it to build datasets but does not declare it
    "safetensors==0.7.0",
]

TEST = [
    "pytest==9.2.0",
    "pytest-xdist==3.8.0",
    "dill==0.4.1",  # tfds.testing
    "scikit-learn==1.9.1",  # independent references for the evaluation metrics (ndcg_score, average_precision_score)
    # Parity tests against PyTorch references. OpenFlamingo itself (open-flamingo 2.0.1 and
    # open_clip_torch 2.24.0) is installed with --no-deps by scripts/install.sh: its declared
    # dependencies pull torchvision, which has no CPU build here.
    "torch==2.13.0",
    "transformers==4.36.2",
    "tokenizers==0.15.2",
    "einops==0.8.2",
    "einops-exts==0.0.4",
]

setup(
    name="flamingo_jax",
    version="0.1.0",
    description=__doc__,
    python_requires=">=3.11",
    packages=find_packages(include=["flamingo_jax", "flamingo_jax.*"])
    + ["flamingo_jax_datasets"]
    + ["flamingo_jax_datasets." + p for p in find_packages(where="data")],
    package_dir={"flamingo_jax_datasets": "data"},
    include_package_data=True,
    package_data={"flamingo_jax_datasets": ["*/dummy_data/**/*", "*/*.txt", "*/*.tsv", "*/*.json"]},
    install_requires=RUNTIME,
    extras_require={"test": TEST},
)
