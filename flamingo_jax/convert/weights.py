"""Reading checkpoint tensors into numpy, and bookkeeping of which names a conversion consumed.

Formats: `.safetensors` (read with safetensors' numpy loader, no torch needed; bfloat16 tensors are read
through ml_dtypes since numpy has no bfloat16), sharded safetensors (`*.safetensors.index.json`), and
PyTorch pickles (`.bin`, `.pt`, `.pth`: these need torch, loaded with `weights_only=True`).

`Weights` hands tensors out by name and remembers what was taken; `finish()` raises `UnusedWeightsError`
listing every name that was neither used nor explicitly ignored with a reason, so nothing is dropped
silently.
"""

from __future__ import annotations

import json
import os
import re
import struct
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

_ST_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "I64": np.int64, "I32": np.int32,
              "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}


def _read_safetensors(path: str) -> dict[str, np.ndarray]:
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    dtypes = {v["dtype"] for k, v in header.items() if k != "__metadata__"}
    if dtypes <= set(_ST_DTYPES):
        from safetensors.numpy import load_file
        return dict(load_file(path))
    # numpy has no bfloat16 (or float8): read the raw buffers through ml_dtypes and widen to float32.
    import ml_dtypes
    extra = {"BF16": ml_dtypes.bfloat16, "F8_E4M3": ml_dtypes.float8_e4m3fn, "F8_E5M2": ml_dtypes.float8_e5m2}
    out = {}
    with open(path, "rb") as f:
        base = 8 + n
        for name, info in header.items():
            if name == "__metadata__":
                continue
            dt = _ST_DTYPES.get(info["dtype"]) or extra.get(info["dtype"])
            if dt is None:
                raise ConversionError(f"{path}: tensor {name} has unsupported dtype {info['dtype']}")
            start, stop = info["data_offsets"]
            f.seek(base + start)
            arr = np.frombuffer(f.read(stop - start), dtype=dt).reshape(info["shape"])
            out[name] = arr.astype(np.float32) if info["dtype"] in extra else arr
    return out


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


def read_file(path: str) -> dict[str, np.ndarray]:
    """All tensors of one checkpoint file, by name (a leading DDP `module.` prefix is removed)."""
    if not os.path.isfile(path):
        raise ConversionError(f"no checkpoint file at {path}")
    if path.endswith(".safetensors"):
        tensors = _read_safetensors(path)
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
        from flamingo_jax.progress import Progress

        with open(path) as f:
            shards = sorted(set(json.load(f)["weight_map"].values()))
        out: dict[str, np.ndarray] = {}
        # A large checkpoint's shards take minutes to read: one line per shard (rate, ETA) on stderr, so a
        # CLI's stdout stays its result.
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

    def __init__(self, tensors: Mapping[str, np.ndarray], source: str):
        self.tensors = dict(tensors)
        self.source = source
        self.used: set[str] = set()
        self.ignored: dict[str, str] = {}  # name -> reason

    def __contains__(self, name: str) -> bool:
        return name in self.tensors

    def names(self) -> list[str]:
        return sorted(self.tensors)

    def take(self, name: str, shape: Iterable[int] | None = None) -> np.ndarray:
        """The tensor `name` as float32 (checked against `shape` if given); marks it used."""
        if name not in self.tensors:
            stem = name.rsplit(".", 2)[0]
            near = [k for k in self.tensors if k.startswith(stem)][:10]
            raise ConversionError(f"{self.source}: missing weight {name!r}"
                                  + (f" (similar names: {near})" if near else ""))
        x = np.asarray(self.tensors[name])
        if shape is not None and tuple(x.shape) != tuple(shape):
            raise ConversionError(f"{self.source}: weight {name!r} has shape {tuple(x.shape)}, "
                                  f"expected {tuple(shape)} from the config")
        self.used.add(name)
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
