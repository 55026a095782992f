"""Image and video preprocessing: decode, resize keeping aspect with mean padding, augment, frame sampling.

Outputs are float32 in [0, 1] (the model normalises): images float32[S, S, 3], clips float32[F, S, S, 3].
"""

from __future__ import annotations

import io
from typing import Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError


class BadRecord(Exception):
    """A record (or one of its media) is unusable; `reason` is the counter name it is reported under."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


def decode_image(data: bytes) -> np.ndarray:
    """Encoded bytes (PNG/JPEG/...) -> uint8[H, W, 3]. Raises BadRecord('missing_image' | 'undecodable_image')."""
    if not data:
        # Builders store b'' for a file that was listed but missing on disk.
        raise BadRecord("missing_image")
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            return np.asarray(im.convert("RGB"))
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise BadRecord("undecodable_image", str(e)) from None


def resize_pad(img: np.ndarray, size: int) -> np.ndarray:
    """uint8[H, W, 3] -> float32[size, size, 3] in [0, 1]: longest side to `size`, aspect kept, centred,
    the rest filled with the image's own mean colour (mean padding, so padding carries no edge signal)."""
    h, w = img.shape[:2]
    s = size / max(h, w)
    nh, nw = max(1, round(h * s)), max(1, round(w * s))
    resized = np.asarray(Image.fromarray(img).resize((nw, nh), Image.BILINEAR), np.float32) / 255.0
    out = np.empty((size, size, 3), np.float32)
    out[:] = resized.reshape(-1, 3).mean(0)
    top, left = (size - nh) // 2, (size - nw) // 2
    out[top:top + nh, left:left + nw] = resized
    return out


def augment(imgs: np.ndarray, rng: np.random.Generator, flip_prob: float, colour_strength: float) -> np.ndarray:
    """float32[..., H, W, 3] -> same: random horizontal flip and brightness/contrast/saturation jitter.

    One draw per call, so every frame of a clip gets the same augmentation. Hue is never changed: colour
    names are part of the text.
    """
    if flip_prob > 0 and rng.random() < flip_prob:
        imgs = imgs[..., :, ::-1, :]
    if colour_strength > 0:
        b, c, s = rng.uniform(-1, 1, 3) * colour_strength
        imgs = imgs + b
        mean = imgs.mean(axis=(-3, -2, -1), keepdims=True)
        imgs = (imgs - mean) * (1 + c) + mean
        grey = imgs.mean(axis=-1, keepdims=True)
        imgs = (imgs - grey) * (1 + s) + grey
        imgs = np.clip(imgs, 0.0, 1.0)
    return np.ascontiguousarray(imgs, dtype=np.float32)


def sample_frame_indices(n_available: int, src_fps: float, n_frames: int, fps: float,
                         rng: np.random.Generator | None) -> np.ndarray:
    """int[n_frames]: indices of n_frames frames `1/fps` seconds apart.

    Training (rng given): random start among those that fit; evaluation (rng None): centred. Clips too
    short for n_frames at that rate repeat their last frame (the model sees a static tail, not zeros).
    """
    if n_available <= 0:
        raise BadRecord("no_frames")
    stride = max(src_fps / fps, 1e-6) if src_fps > 0 else 1.0
    span = (n_frames - 1) * stride
    max_start = max(0.0, (n_available - 1) - span)
    start = rng.uniform(0, max_start) if rng is not None else max_start / 2
    idx = np.round(start + stride * np.arange(n_frames)).astype(np.int64)
    return np.minimum(idx, n_available - 1)


def clip_frames(frames: Sequence[bytes], src_fps: float, n_frames: int, fps: float, size: int,
                rng: np.random.Generator | None) -> np.ndarray:
    """Encoded frames -> float32[n_frames, size, size, 3]; decodes only the sampled frames."""
    idx = sample_frame_indices(len(frames), src_fps, n_frames, fps, rng)
    cache: dict[int, np.ndarray] = {}
    out = []
    for i in idx:
        if int(i) not in cache:
            cache[int(i)] = resize_pad(decode_image(frames[int(i)]), size)
        out.append(cache[int(i)])
    return np.stack(out)
