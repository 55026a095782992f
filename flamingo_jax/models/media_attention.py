"""Cross-attention to each token's own image only, without scoring every other image's keys.

Under the paper's masking (Section 2.3, Fig. 7: a text token attends to the visual tokens of the last image
before it, phi), a token of a 32-shot prompt may attend to 64 of its 33 x 64 visual tokens. The dense form
(`media_mask` + `dot_product_attention`) still computes all 33 x 64 scores per token and masks 32/33 of them:
on a 17-image, 560-token few-shot prompt that masked work is two thirds of the prefill (benchmarks/generate.py;
README, "Generation speed").

Here the sequence is cut into chunks of CHUNK tokens and each chunk attends to a window of WINDOW consecutive
images starting at the first image its tokens see. Whenever every token's image lies in its chunk's window
(always, when each image is followed by at least CHUNK / (WINDOW - 1) tokens, as in few-shot prompts) this
equals the dense masked attention up to fp32 summation order: masked keys get exactly zero weight there. When
some chunk sees more images than its window holds (e.g. many adjacent `<image>` tags), the whole call falls
back to the dense form at run time (lax.cond), so the result never depends on the layout.
"""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp

from flamingo_jax.models.attention import LARGE_NEGATIVE, dot_product_attention
from flamingo_jax.models.xattn import media_mask

CHUNK = 32  # query tokens per chunk (measured on a 17-image prompt: 16 copies each window too often, 64+ scores too much)
WINDOW = 4  # images a chunk may see: 4 x 64 keys per token instead of T x 64; fits when images are >= 11 tokens apart


@flax.struct.dataclass
class OwnImageMask:
    """The "previous" cross-attention mask kept as indices: media_index int32[B, L] (1-based, 0 = no image
    yet), image_mask bool[B, T]. Passed where a dense bool[B, 1, L, T*K] mask would go; attention calls
    `attend` on it instead of masking dense scores."""

    media_index: jax.Array
    image_mask: jax.Array
    tokens_per_image: int = flax.struct.field(pytree_node=False)

    @staticmethod
    def applies(num_images: int, length: int) -> bool:
        """Whether windowing can save work: more images than two windows, more tokens than two chunks."""
        return num_images > 2 * WINDOW and length >= 2 * CHUNK

    def dense(self) -> jax.Array:
        """The same mask as bool[B, 1, L, T*K] (xattn.media_mask's 'previous' rule)."""
        return media_mask(self.media_index, self.image_mask, self.tokens_per_image, "previous")

    def attend(self, q: jax.Array, k: jax.Array, v: jax.Array, bias: Any = None,
               scale: float | None = None) -> jax.Array:
        """q [B, L, H, Dh]; k, v [B, T*K, G, Dh] -> [B, L, H, Dh], equal to dot_product_attention(q, k, v,
        self.dense()) (see the module docstring)."""
        if bias is not None or k.shape[2] != q.shape[2]:  # biases and grouped heads: not used by cross-attention
            return dot_product_attention(q, k, v, self.dense(), bias, scale)
        starts, fits = self._windows()
        return jax.lax.cond(fits, lambda: self._windowed(q, k, v, starts, scale),
                            lambda: dot_product_attention(q, k, v, self.dense(), None, scale))

    def _chunks(self) -> jax.Array:
        """media_index as int32[B, n, CHUNK], padded at the end with each row's last index."""
        b, length = self.media_index.shape
        n = -(-length // CHUNK)
        mi = jnp.pad(self.media_index, ((0, 0), (0, n * CHUNK - length)), mode="edge")
        return mi.reshape(b, n, CHUNK)

    def _windows(self) -> tuple[jax.Array, jax.Array]:
        """(first image of each chunk's window, 0-based int32[B, n]; whether every token's image is inside)."""
        t = self.image_mask.shape[1]
        mi = self._chunks()
        lowest = jnp.min(jnp.where(mi > 0, mi, t + 1), axis=-1)  # the chunk's first seen image (t + 1: none)
        starts = jnp.clip(lowest - 1, 0, t - WINDOW)
        inside = (mi == 0) | ((mi - 1 >= starts[..., None]) & (mi - 1 < starts[..., None] + WINDOW))
        return starts, jnp.all(inside)

    def _windowed(self, q, k, v, starts, scale):
        b, length, h, dh = q.shape
        kt = self.tokens_per_image
        t = self.image_mask.shape[1]
        mi = self._chunks()
        n = mi.shape[1]
        scale = dh**-0.5 if scale is None else scale
        images = starts[..., None] + jnp.arange(WINDOW)  # [B, n, W] 0-based image of each window slot

        def window(x):  # [B, T*K, H, Dh] -> [B, n, W*K, H, Dh]
            x = x.reshape(b, t, kt, h, dh)
            rows = jax.vmap(lambda xb, ib: xb[ib])(x, images)  # [B, n, W, K, H, Dh]
            return rows.reshape(b, n, WINDOW * kt, h, dh)

        qc = jnp.pad(q, ((0, 0), (0, n * CHUNK - length), (0, 0), (0, 0))).reshape(b, n, CHUNK, h, dh)
        scores = jnp.einsum("bnqhd,bnkhd->bnhqk", qc,
                            window(k).astype(q.dtype), preferred_element_type=jnp.float32) * scale
        key_image = jnp.repeat(images + 1, kt, axis=-1)  # [B, n, W*K] 1-based
        present = jnp.repeat(
            jnp.take_along_axis(self.image_mask, images.reshape(b, -1), axis=1).reshape(b, n, WINDOW), kt, axis=-1)
        mask = ((mi[..., :, None] == key_image[..., None, :]) & present[..., None, :])[:, :, None]  # [B,n,1,C,WK]
        scores = jnp.where(mask, scores, LARGE_NEGATIVE)
        weights = jax.nn.softmax(scores, axis=-1)
        weights = jnp.where(jnp.any(mask, axis=-1, keepdims=True), weights, 0.0).astype(v.dtype)
        out = jnp.einsum("bnhqk,bnkhd->bnqhd", weights, window(v).astype(v.dtype))
        return out.reshape(b, n * CHUNK, h, dh)[:, :length].astype(q.dtype)
