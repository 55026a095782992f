"""Drawing world scenes (images) and clips (videos) with PIL.

A scene is a background plus 1-3 objects placed in distinct columns (left / middle / right), so
spatial questions have one answer. Objects are drawn at 2x and downsampled for anti-aliasing.
Images: uint8[H, W, 3]; clips: uint8[F, H, W, 3].
"""

from __future__ import annotations

import dataclasses
import io
import math

import numpy as np
from PIL import Image, ImageDraw

from flamingo_jax.data.world import lexicon

_SUPERSAMPLE = 2


@dataclasses.dataclass(frozen=True)
class Obj:
    """One drawn object; positions are fractions of the image side."""
    entity: int  # index into the world's entities
    colour: str  # key of lexicon.COLOURS
    size: str  # 'small' | 'big'
    column: str  # 'left' | 'middle' | 'right'
    cy: float  # vertical centre in [0, 1]
    angle: float  # rotation in radians

    @property
    def cx(self) -> float:
        return {"left": 1 / 6, "middle": 0.5, "right": 5 / 6}[self.column]

    @property
    def radius(self) -> float:
        # As large as a column allows (half its width is 1/6): at 32 pixels a creature of radius 0.09 was 6 pixels
        # across and its kind could not be learnt from it (README, "In-context learning on the world").
        return 0.125 if self.size == "small" else 0.165


def _polygon(n: int, cx: float, cy: float, r: float, angle: float, inner: float | None = None):
    pts = []
    steps = 2 * n if inner else n
    for k in range(steps):
        rr = r if (inner is None or k % 2 == 0) else r * inner
        a = angle + 2 * math.pi * k / steps - math.pi / 2
        pts.append((cx + rr * math.cos(a), cy + rr * math.sin(a)))
    return pts


def _rotate(pts, cx, cy, angle):
    c, s = math.cos(angle), math.sin(angle)
    return [(cx + (x - cx) * c - (y - cy) * s, cy + (x - cx) * s + (y - cy) * c) for x, y in pts]


def draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, angle: float,
               fill: tuple[int, ...], hole: tuple[int, ...]) -> None:
    """Draws one shape of circumradius r (pixels) centred at (cx, cy); `hole` fills cut-outs."""
    outline = tuple(max(0, c - 90) for c in fill[:3]) + tuple(fill[3:])
    w = max(1, int(r / 8))
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill, outline=outline, width=w)
    elif shape == "ring":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill, outline=outline, width=w)
        q = r * 0.5
        draw.ellipse([cx - q, cy - q, cx + q, cy + q], fill=hole)
    elif shape == "crescent":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill, outline=outline, width=w)
        dx, dy = 0.45 * r * math.cos(angle), 0.45 * r * math.sin(angle)
        q = r * 0.85
        draw.ellipse([cx + dx - q, cy + dy - q, cx + dx + q, cy + dy + q], fill=hole)
    elif shape == "square":
        draw.polygon(_polygon(4, cx, cy, r, angle + math.pi / 4), fill=fill, outline=outline)
    elif shape == "diamond":
        pts = [(cx, cy - r), (cx + 0.6 * r, cy), (cx, cy + r), (cx - 0.6 * r, cy)]
        draw.polygon(_rotate(pts, cx, cy, angle), fill=fill, outline=outline)
    elif shape == "triangle":
        draw.polygon(_polygon(3, cx, cy, r, angle), fill=fill, outline=outline)
    elif shape == "star":
        draw.polygon(_polygon(5, cx, cy, r, angle, inner=0.45), fill=fill, outline=outline)
    elif shape == "cross":
        t = 0.33 * r
        pts = [(cx - t, cy - r), (cx + t, cy - r), (cx + t, cy - t), (cx + r, cy - t), (cx + r, cy + t),
               (cx + t, cy + t), (cx + t, cy + r), (cx - t, cy + r), (cx - t, cy + t), (cx - r, cy + t),
               (cx - r, cy - t), (cx - t, cy - t)]
        draw.polygon(_rotate(pts, cx, cy, angle), fill=fill, outline=outline)
    elif shape == "arrow":
        pts = [(cx - r, cy - 0.3 * r), (cx + 0.1 * r, cy - 0.3 * r), (cx + 0.1 * r, cy - 0.8 * r), (cx + r, cy),
               (cx + 0.1 * r, cy + 0.8 * r), (cx + 0.1 * r, cy + 0.3 * r), (cx - r, cy + 0.3 * r)]
        draw.polygon(_rotate(pts, cx, cy, angle), fill=fill, outline=outline)
    elif shape == "bar":
        pts = [(cx - r, cy - 0.35 * r), (cx + r, cy - 0.35 * r), (cx + r, cy + 0.35 * r), (cx - r, cy + 0.35 * r)]
        draw.polygon(_rotate(pts, cx, cy, angle), fill=fill, outline=outline)
    elif shape == "tee":
        t = 0.3 * r
        pts = [(cx - r, cy - r), (cx + r, cy - r), (cx + r, cy - r + 2 * t), (cx + t, cy - r + 2 * t), (cx + t, cy + r),
               (cx - t, cy + r), (cx - t, cy - r + 2 * t), (cx - r, cy - r + 2 * t)]
        draw.polygon(_rotate(pts, cx, cy, angle), fill=fill, outline=outline)
    elif shape == "hourglass":
        pts = [(cx - 0.8 * r, cy - r), (cx + 0.8 * r, cy - r), (cx, cy), (cx + 0.8 * r, cy + r), (cx - 0.8 * r, cy + r),
               (cx, cy)]
        draw.polygon(_rotate(pts, cx, cy, angle), fill=fill, outline=outline)
    else:
        raise ValueError(f"unknown shape {shape!r}")


def background(name: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """uint8[size, size, 3] textured background; texture varies per image (rng) but the kind is fixed."""
    base, kind = lexicon.BACKGROUNDS[name]
    img = np.empty((size, size, 3), np.float32)
    img[:] = base
    yy, xx = np.mgrid[0:size, 0:size] / max(size, 1)
    if kind == "noise":
        img += rng.normal(0, 10, (size, size, 1))
    elif kind == "stripes":
        period = rng.uniform(0.08, 0.16)
        img += 18 * np.sign(np.sin(2 * np.pi * (yy + 0.3 * xx) / period))[..., None]
    elif kind == "gradient":
        img += (60 * (yy - 0.5))[..., None]
    elif kind == "dots":
        mask = rng.random((size, size)) < 0.02
        img[mask] = (230, 230, 200)
    elif kind == "checks":
        period = rng.uniform(0.15, 0.3)
        img += 14 * (((xx // period) + (yy // period)) % 2 * 2 - 1)[..., None]
    return np.clip(img, 0, 255).astype(np.uint8)


def render(objs: list[Obj], bg_name: str, size: int, entities, rng: np.random.Generator,
           scale: list[float] | None = None, offsets: list[tuple[float, float]] | None = None,
           bg: np.ndarray | None = None) -> np.ndarray:
    """uint8[size, size, 3]: the scene. scale/offsets (per object) animate clips; bg reuses a background."""
    if bg is None:
        bg = background(bg_name, size, rng)
    big = size * _SUPERSAMPLE
    canvas = Image.fromarray(bg).resize((big, big), Image.NEAREST).convert("RGBA")
    for i, o in enumerate(objs):
        s = scale[i] if scale else 1.0
        dx, dy = offsets[i] if offsets else (0.0, 0.0)
        # Each object on its own transparent layer so cut-outs (ring, crescent) show the textured background.
        layer = Image.new("RGBA", (big, big), (0, 0, 0, 0))
        draw_shape(ImageDraw.Draw(layer), entities[o.entity].shape, (o.cx + dx) * big, (o.cy + dy) * big,
                   o.radius * s * big, o.angle, lexicon.COLOURS[o.colour] + (255, ), (0, 0, 0, 0))
        canvas.alpha_composite(layer)
    return np.asarray(canvas.convert("RGB").resize((size, size), Image.BILINEAR))


def encode_png(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()
