"""Reading checkpoint tensors into numpy, and bookkeeping of which names a conversion consumed.

Formats: `.safetensors` and sharded safetensors (`*.safetensors.index.json`), read lazily with safetensors'
`safe_open` (no torch needed; one tensor at a time, bfloat16 kept as ml_dtypes bfloat16, never widened), and
PyTorch pickles (`.bin`, `.pt`, `.pth`: these need torch, loaded whole with `weights_only=True`).

`Weights` hands tensors out by name and remembers what was taken; `finish()` raises `UnusedWeightsError`
listing every name that was neither used nor explicitly ignored with a reason, so nothing is dropped
silently.
"""

from __future__ import annotations

import json
import os
import re
import sys
from typing import Iterable, Mapping

import numpy as np

SAFETENSORS_NAMES = ("model.safetensors", "model.safetensors.index.json")
TORCH_NAMES = ("pytorch_model.bin", "pytorch_model.bin.index.json")


class ConversionError(ValueError):
    """A checkpoint that cannot be converted (unsupported option, wrong shape, missing tensor)."""


class UnusedWeightsError(ConversionError):
    """The checkpoint holds tensors the conversion did not use and was not told to ignore."""

    def __init__(self, source: str, names: list[str]):
        self.names = names
        shown = "\n  ".join(names[:200]) + ("\n  ..." if len(names) > 200 else "")
        super().__init__(f"{source}: {len(names)} unknown or unused weight name(s):\n  {shown}")


# ------------------------------------------------------------------------------------------ reading


class LazyTensors(Mapping):
    """name -> tensor of one or more safetensors files, each read when asked for (safetensors' `safe_open`
    memory-maps the file; nothing is kept), in its stored dtype: bfloat16 stays bfloat16 (ml_dtypes), so a
    conversion holds one input tensor at a time and never a widened copy of the checkpoint."""

    def __init__(self, files: dict[str, str], prefix: str = ""):
        self.files = files  # tensor name (as stored) -> file
        self.prefix = prefix  # stripped from the stored names (a DDP `module.`)

    @classmethod
    def open(cls, paths: Iterable[str]) -> "LazyTensors":
        from safetensors import safe_open

        files: dict[str, str] = {}
        for path in paths:
            with safe_open(path, framework="numpy") as f:
                files.update({k: path for k in f.keys()})
        return cls(files)

    def without_prefix(self, prefix: str) -> "LazyTensors":
        return LazyTensors(self.files, self.prefix + prefix)

    def __getitem__(self, name: str) -> np.ndarray:
        from safetensors import safe_open

        stored = self.prefix + name
        if stored not in self.files:
            raise KeyError(name)
        with safe_open(self.files[stored], framework="numpy") as f:
            try:
                return f.get_tensor(stored)
            except (TypeError, ValueError) as e:  # e.g. a float8 dtype numpy cannot hold
                raise ConversionError(f"{self.files[stored]}: tensor {stored} cannot be read ({e})") from None

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.prefix + name in self.files

    def __iter__(self):
        n = len(self.prefix)
        return (k[n:] for k in self.files if k.startswith(self.prefix))

    def __len__(self) -> int:
        return sum(1 for _ in self)


def _read_torch(path: str) -> dict[str, np.ndarray]:
    try:
        import torch
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ConversionError(f"{path} is a PyTorch pickle: reading it needs torch (pip install torch), "
                              "or convert it to safetensors first") from e
    obj = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model_state_dict", "model"):  # training checkpoints wrap the state dict
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
            break
    if not isinstance(obj, Mapping):
        raise ConversionError(f"{path}: expected a state dict (name -> tensor), got {type(obj).__name__}")
    out = {}
    for name, t in obj.items():
        if not hasattr(t, "detach"):
            raise ConversionError(f"{path}: entry {name!r} is a {type(t).__name__}, not a tensor")
        t = t.detach().cpu()
        if t.dtype in (torch.bfloat16, torch.float16) or str(t.dtype).startswith("torch.float8"):
            t = t.float()
        out[name] = t.numpy()
    return out


def read_file(path: str) -> Mapping[str, np.ndarray]:
    """All tensors of one checkpoint file, by name (a leading DDP `module.` prefix is removed): safetensors
    lazily (LazyTensors), PyTorch pickles loaded whole."""
    if not os.path.isfile(path):
        raise ConversionError(f"no checkpoint file at {path}")
    if path.endswith(".safetensors"):
        tensors = LazyTensors.open([path])
        if len(tensors) and all(k.startswith("module.") for k in tensors):
            tensors = tensors.without_prefix("module.")
        return tensors
    elif path.endswith((".bin", ".pt", ".pth", ".ckpt")):
        tensors = _read_torch(path)
    else:
        raise ConversionError(f"{path}: unknown checkpoint format (expected .safetensors, .bin, .pt or .pth)")
    if tensors and all(k.startswith("module.") for k in tensors):
        tensors = {k[len("module."):]: v for k, v in tensors.items()}
    return tensors


def read_dir(src: str) -> dict[str, np.ndarray]:
    """All tensors of a HuggingFace checkpoint directory (single file or sharded; safetensors first)."""
    for name in SAFETENSORS_NAMES + TORCH_NAMES:
        path = os.path.join(src, name)
        if not os.path.isfile(path):
            continue
        if not name.endswith(".index.json"):
            return read_file(path)
        with open(path) as f:
            shards = sorted(set(json.load(f)["weight_map"].values()))
        if name.startswith("model.safetensors"):  # shard by shard, each tensor when it is used
            return LazyTensors.open([os.path.join(src, shard) for shard in shards])
        from flamingo_jax.progress import Progress

        out: dict[str, np.ndarray] = {}
        # PyTorch shards are loaded whole and take minutes for a large checkpoint: one line per shard (rate,
        # ETA) on stderr, so a CLI's stdout stays its result.
        progress = Progress(f"[convert] {src}: shard", len(shards), unit="shards", every=0.0, stream=sys.stderr)
        for shard in shards:
            out.update(read_file(os.path.join(src, shard)))
            progress.update(1)
        return out
    raise ConversionError(f"{src}: no {' / '.join(SAFETENSORS_NAMES + TORCH_NAMES)} found")


def read_config(src: str, name: str = "config.json") -> dict:
    path = os.path.join(src, name)
    if not os.path.isfile(path):
        raise ConversionError(f"{src}: no {name} (a HuggingFace checkpoint directory has one)")
    with open(path) as f:
        return json.load(f)


# ------------------------------------------------------------------------------------ bookkeeping


class Weights:
    """Tensors by name, handed out once each; `finish()` checks that every name was accounted for."""

    def __init__(self, tensors: Mapping[str, np.ndarray], source: str, *, progress_every: float = 10.0):
        self.tensors = tensors if isinstance(tensors, LazyTensors) else dict(tensors)
        from flamingo_jax.progress import Progress

        # A large checkpoint converts for minutes: a line (rate, ETA) every progress_every seconds on stderr.
        self.progress = Progress(f"[convert] {source}: tensor", len(self.tensors), unit="tensors", every=progress_every,
                                 stream=sys.stderr)
        self.source = source
        self.used: set[str] = set()
        self.ignored: dict[str, str] = {}  # name -> reason

    def __contains__(self, name: str) -> bool:
        return name in self.tensors

    def names(self) -> list[str]:
        return sorted(self.tensors)

    def take(self, name: str, shape: Iterable[int] | None = None) -> np.ndarray:
        """The tensor `name` (checked against `shape` if given); marks it used. Floats come as float32, except
        16-bit ones (bfloat16, float16), which keep their dtype: converting never widens the checkpoint
        (flamingo_jax.convert.store widens to float32 at save time unless --dtype bfloat16)."""
        if name not in self.tensors:
            stem = name.rsplit(".", 2)[0]
            near = [k for k in self.tensors if k.startswith(stem)][:10]
            raise ConversionError(f"{self.source}: missing weight {name!r}" +
                                  (f" (similar names: {near})" if near else ""))
        x = np.asarray(self.tensors[name])
        if shape is not None and tuple(x.shape) != tuple(shape):
            raise ConversionError(f"{self.source}: weight {name!r} has shape {tuple(x.shape)}, "
                                  f"expected {tuple(shape)} from the config")
        self.used.add(name)
        self.progress.update(1)
        if x.dtype.itemsize == 2 and x.dtype.kind in "fV" or str(x.dtype) == "bfloat16":
            return x
        return x.astype(np.float32) if np.issubdtype(x.dtype, np.floating) else x

    def maybe(self, name: str, shape: Iterable[int] | None = None) -> np.ndarray | None:
        return self.take(name, shape) if name in self.tensors else None

    def ignore(self, pattern: str, reason: str) -> int:
        """Marks every not-yet-used name matching the regex `pattern` (fullmatch) as deliberately unused."""
        rx = re.compile(pattern)
        hits = [k for k in self.tensors if k not in self.used and rx.fullmatch(k)]
        for k in hits:
            self.ignored[k] = reason
        return len(hits)

    def ignore_names(self, names: Iterable[str], reason: str) -> int:
        """Marks the given names (those present and not yet used) as deliberately unused."""
        hits = [k for k in names if k in self.tensors and k not in self.used]
        for k in hits:
            self.ignored[k] = reason
        return len(hits)

    def unused(self) -> list[str]:
        return sorted(k for k in self.tensors if k not in self.used and k not in self.ignored)

    def finish(self) -> dict[str, str]:
        """Raises UnusedWeightsError if any name was neither used nor ignored; returns the ignored ones."""
        left = self.unused()
        if left:
            raise UnusedWeightsError(self.source, left)
        return dict(sorted(self.ignored.items()))


# ------------------------------------------------------------------------------ layout helpers


def linear(w: np.ndarray) -> np.ndarray:
    """torch Linear weight [out, in] -> our kernel [in, out]."""
    return np.ascontiguousarray(w.T)


def to_heads_in(kernel: np.ndarray, heads: int) -> np.ndarray:
    """[D, H*Dh] -> [D, H, Dh] (q/k/v projection kernels)."""
    d, hd = kernel.shape
    return kernel.reshape(d, heads, hd // heads)


def to_heads_out(kernel: np.ndarray, heads: int) -> np.ndarray:
    """[H*Dh, D] -> [H, Dh, D] (attention output kernels)."""
    hd, d = kernel.shape
    return kernel.reshape(heads, hd // heads, d)
