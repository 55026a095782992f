"""TensorFlow, when something imports it (seqio, or TFDS preparing a dataset), stays quiet and off the
accelerators: JAX owns them, and TF would otherwise reserve GPU memory JAX needs (big_vision does the same with
`tf.config.set_visible_devices([], "GPU")`).

`install()` runs when flamingo_jax is imported; it imports nothing heavy: the device setting is a post-import
hook (wrapt's, the library TFDS and clu already depend on), applied the moment TensorFlow is imported, and
TF's C++ logging is lowered through its environment variable before that. On a host without an NVIDIA
device TF's failed CUDA probe ("failed call to cuInit") is an ERROR-level line, so level 3 is used there; with
one, level 2 (warnings and info hidden, errors shown). A TF_CPP_MIN_LOG_LEVEL the user set is kept.
"""

from __future__ import annotations

import glob
import os

_installed = False


def keep_off_accelerators(tf) -> None:
    """No GPU (or TPU) for TensorFlow: its data ops run on the CPU."""
    for kind in ("GPU", "TPU"):
        try:
            tf.config.set_visible_devices([], kind)
        except (RuntimeError, ValueError):  # devices already initialised, or no such device type
            pass


def install() -> None:
    global _installed
    if _installed:
        return
    _installed = True
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2" if glob.glob("/dev/nvidia[0-9]*") else "3")
    try:
        import wrapt
    except ImportError:  # pragma: no cover - wrapt comes with tensorflow-datasets
        return
    # By name: resolved when TensorFlow is imported (so it is always this module's current function).
    wrapt.register_post_import_hook(f"{__name__}:keep_off_accelerators", "tensorflow")
