"""RICES (Retrieval-based In-Context Example Selection): support examples chosen by visual similarity.

Features: the FROZEN vision encoder's output tokens, mean-pooled (over tokens and, for videos, frames) and
L2-normalised. The support pool's features are computed once and cached on disk as
<cache_dir>/rices_<key>.npz, key = sha256 of (the vision params' content, the eval set's identity), so a new
checkpoint with the same frozen vision encoder reuses them and a different encoder or dataset never does.
Selection: the top-N support examples by cosine similarity, ordered so the MOST similar comes LAST, right
before the query (the paper's order).
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Callable

import jax
import numpy as np


def params_hash(tree) -> str:
    """sha256 over a param tree's paths, dtypes, shapes and content checksums.

    The checksums (flamingo_jax.checkpoint.checksums: per array, a sum and a position-weighted sum of its
    words mod 2^32) are computed shard by shard where the arrays live and only the sums are gathered across
    processes, so hashing a sharded vision encoder reads no array whole to any host, and gives the same key
    on every mesh. Any change confined to one word of an array changes its weighted sum."""
    from flamingo_jax.checkpoint import checksums

    sums = checksums(tree)
    h = hashlib.sha256()
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        key = jax.tree_util.keystr(path)
        h.update(f"{key}|{np.dtype(leaf.dtype)}|{tuple(leaf.shape)}|{sums[key]}".encode())
    return h.hexdigest()


def normalize(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def cached_features(cache_dir: str, key_parts: dict, compute: Callable[[], np.ndarray],
                    agree: Callable[[bool], bool] = bool) -> np.ndarray:
    """Features from <cache_dir>/rices_<sha256(key_parts)>.npz, computing and saving them on a miss.
    agree(hit) -> hit decides the same on every process when compute() is a collective (e.g. all processes
    must have the file: flamingo_jax.evaluation.multihost.all_true)."""
    key = hashlib.sha256(json.dumps(key_parts, sort_keys=True).encode()).hexdigest()[:24]
    path = os.path.join(cache_dir, f"rices_{key}.npz")
    if agree(os.path.exists(path)):
        with np.load(path) as f:
            return f["features"]
    feats = normalize(compute())
    os.makedirs(cache_dir, exist_ok=True)
    tmp = path + f".tmp{os.getpid()}.npz"
    np.savez(tmp, features=feats, key=json.dumps(key_parts, sort_keys=True))
    os.replace(tmp, path)  # atomic: concurrent processes never read a partial file
    return feats


def select(support: np.ndarray, query: np.ndarray, n: int) -> np.ndarray:
    """support [N, D], query [Q, D] (normalised) -> int[Q, n]: the n most similar support indices, the most
    similar LAST. Ties break toward the lower index (stable)."""
    if n > support.shape[0]:
        raise ValueError(f"RICES needs {n} support examples, the pool has {support.shape[0]}")
    sims = query @ support.T  # [Q, N]
    order = np.argsort(-sims, axis=1, kind="stable")[:, :n]  # most similar first
    return order[:, ::-1].copy()
