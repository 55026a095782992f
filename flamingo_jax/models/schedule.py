"""The Flamingo layer schedule as data: segments of LM layers and the cross-attention layer before each.

Flamingo interleaves new cross-attention layers with the frozen LM's blocks (Section 2.2 and Figure 4 of
the paper); Table 3's ablations (iv) and (v) vary the kind (GATED XATTN-DENSE, VANILLA XATTN, GRAFTING) and
how often one is inserted. `layer_schedule` turns those choices into a tuple of `Segment`s, which one
runner, `Flamingo._run_schedule`, applies in order.

  gated, every 2 of 5 layers:   (x0 | 0 1) (x1 | 2 3) (x2 | 4)
  offset 1, every 2 of 4:       (- | 0) (x0 | 1 2) (x1 | 3)
  grafting, 2 new layers:       (- | 0 1 2 3) (x0 |) (x1 |)

With stacked (scanned) params, evenly spaced segments of the same length run as one lax.scan whose body is
one segment, so compile time does not grow with depth: Segment(0, 0, 2, scan=2) above stands for the first
two gated segments.
"""

from __future__ import annotations

from typing import NamedTuple

import ml_collections

from flamingo_jax.models.xattn import placement


class Segment(NamedTuple):
    """Cross-attention layer `xattn` (None: none), then LM layers [start, stop).

    Where the cross-attention layer goes depends on the kind: gated, a residual layer before LM layer
    `start`; vanilla, inside LM layer `start` between its self-attention and its FFW; grafting, a new layer
    after the whole LM (its segments hold no LM layers).

    scan: 0 runs the segment once; n >= 1 runs n copies as one lax.scan (stacked params only), copy k with
        cross-attention layer xattn + k and LM layers [start + k * size, stop + k * size), size = stop - start.
    remat: whether config.model.remat applies to the segment (grafting's frozen LM stack runs without).
    """

    xattn: int | None
    start: int
    stop: int
    scan: int = 0
    remat: bool = True


def uniform_stride(positions: tuple[int, ...]) -> int | None:
    """The common distance between cross-attention layers if they are evenly spaced, else None."""
    if len(positions) < 2:
        return None
    gaps = {b - a for a, b in zip(positions, positions[1:])}
    return gaps.pop() if len(gaps) == 1 else None


def layer_schedule(xattn: ml_collections.ConfigDict, num_lm_layers: int, stacked: bool) -> tuple[Segment, ...]:
    """The segments that run a model with cross-attention config `xattn` over `num_lm_layers` LM layers.

    stacked: the params are stacked on a leading layer axis (lm.scan_layers), so evenly spaced segments of
    the same length are folded into one scanned Segment."""
    n = num_lm_layers
    pos = placement(xattn, n)
    if xattn.kind == "grafting":
        lm = Segment(None, 0, n, remat=False)
        if stacked:
            return (lm, Segment(0, n, n, scan=len(pos))) if pos else (lm, )
        return (lm, *(Segment(j, n, n) for j in range(len(pos))))
    if not pos:
        return (Segment(None, 0, n), )
    head = (Segment(None, 0, pos[0]), ) if pos[0] else ()
    segments = [Segment(j, p, stop) for j, (p, stop) in enumerate(zip(pos, (*pos[1:], n)))]
    stride = uniform_stride(pos) if stacked else None
    if stride is not None:
        # All segments but possibly the last (shorter when the depth is not a multiple of the stride).
        full = len(pos) if n - pos[-1] == stride else len(pos) - 1
        segments = [Segment(0, pos[0], pos[0] + stride, scan=full), *segments[full:]]
    return (*head, *segments)
