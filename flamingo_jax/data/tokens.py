"""Token layouts of Flamingo sequences, the per-token media index (phi) and the loss mask.

All functions work on one example; L = seq_len. A layout builds L+1 ids; the model input is ids[:L]
(`tokens`) and the targets are ids[1:] (`targets`).

Layouts (the paper's interleaving, Section 2.3: <image> where an image stood, <EOC> ending each chunk):
  pair:        <BOS><image>caption<EOC><EOS>               (video-text pairs too: the video is one media)
  interleaved: <BOS>text<EOC><image>text<EOC><image>text<EOC><EOS>   (no <EOC> before a leading <image>)

media_index (phi, 1-based, 0 = no media), for input position l:
  prev(l) = number of <image> tokens at positions <= l (inclusive: the <image> token maps to its own image,
            as in the paper's figure and OpenFlamingo's text_time);
  'previous' mode: phi(l) = prev(l);
  'next' mode (per page with probability p_next): text tokens map to the NEXT image, prev(l) + 1, or 0
            when no image follows inside the window [?: the paper does not say; 0 means "no cross-attention
            output", the same as text before the first image in 'previous' mode]; <image> tokens keep
            their own image.

loss_mask over targets (1 = counts):
  'paper' rule (default): every real target except `<image>` (where an image goes is not text to predict)
            and padding; i.e. the paper's sum over all text tokens, including <EOC> and <EOS>.
  'openflamingo' rule: additionally no loss on targets before the first <image> of the sequence and on
            targets after an <EOC> up to the next <image> (OpenFlamingo's MMC4 rule), as in its train_utils.
Padding is detected by position (the sequence's real length), not by id, because some LMs pad with EOS.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from flamingo_jax.data.vocab import Vocabulary


def pad_to(ids: Sequence[int], length: int, pad_id: int) -> tuple[np.ndarray, int]:
    """(int32[length], real_length): ids truncated/padded to length."""
    out = np.full((length, ), pad_id, np.int32)
    n = min(len(ids), length)
    out[:n] = np.asarray(ids[:n], np.int32)
    return out, n


def pair_ids(vocab: Vocabulary, text_ids: Sequence[int], seq_len: int) -> tuple[np.ndarray, int]:
    """int32[seq_len + 1] for <BOS><image>text<EOC><EOS>; long text is cut so that <EOC><EOS> always stay
    (the model always learns to stop), and the result is padded."""
    room = seq_len + 1 - 4
    ids = [vocab.bos_id, vocab.image_id] + list(text_ids[:max(room, 0)]) + [vocab.eoc_id, vocab.eos_id]
    return pad_to(ids, seq_len + 1, vocab.pad_id)


def text_ids(vocab: Vocabulary, text_ids_: Sequence[int], seq_len: int,
             rng: np.random.Generator | None) -> tuple[np.ndarray, int]:
    """int32[seq_len + 1] for <BOS>text<EOS> (text-only LM data): a random window of long documents."""
    ids = [vocab.bos_id] + list(text_ids_) + [vocab.eos_id]
    n = seq_len + 1
    start = int(rng.integers(0, len(ids) - n + 1)) if (rng is not None and len(ids) > n) else 0
    return pad_to(ids[start:start + n], n, vocab.pad_id)


def interleaved_stream(vocab: Vocabulary, items: Sequence[tuple[str, object]]) -> tuple[list[int], list[int]]:
    """Whole-document ids and, per id, the document image index of an <image> token (-1 for text).

    items: ('text', list[int]) or ('image', doc_image_index), in document order.
    """
    ids, img = [vocab.bos_id], [-1]
    for kind, value in items:
        if kind == "image":
            if len(ids) > 1:
                ids.append(vocab.eoc_id)
                img.append(-1)
            ids.append(vocab.image_id)
            img.append(int(value))
        else:
            ids.extend(value)
            img.extend([-1] * len(value))
    ids += [vocab.eoc_id, vocab.eos_id]
    img += [-1, -1]
    return ids, img


def window(ids: Sequence[int], img: Sequence[int], seq_len: int, max_images: int, rng: np.random.Generator | None,
           pad_id: int, eoc_id: int | None = None) -> tuple[np.ndarray, int, list[int], int]:
    """A random (seq_len + 1)-token window with at most max_images <image> tokens.

    <image> tokens after the max_images-th inside the window are skipped (their image is dropped) together
    with the <EOC> just before them, so the text reads as if the image were absent and the window still
    holds seq_len + 1 tokens when the document has them. An <image> in the last slot is only a target (the
    model's inputs are the first seq_len ids): its image is not kept.
    Returns (int32[seq_len + 1] ids, real length, doc indices of the kept images in order, #skipped images).
    """
    n = seq_len + 1
    start = int(rng.integers(0, len(ids) - n + 1)) if (rng is not None and len(ids) > n) else 0
    out: list[int] = []
    kept: list[int] = []
    skipped = 0
    for t, m in zip(ids[start:], img[start:]):
        if len(out) == n:
            break
        if m >= 0 and len(out) == n - 1:
            out.append(t)  # only a target (the inputs are out[:-1]): its image is never seen, so it is not kept
            break
        if m >= 0:
            if len(kept) == max_images:
                skipped += 1
                if eoc_id is not None and out and out[-1] == eoc_id:
                    out.pop()
                continue
            kept.append(m)
        out.append(t)
    arr, length = pad_to(out, n, pad_id)
    return arr, length, kept, skipped


def media_index(tokens: np.ndarray, image_id: int, next_image: bool = False) -> np.ndarray:
    """int32[L] phi for input tokens int32[L] (module docstring)."""
    is_img = tokens == image_id
    prev = np.cumsum(is_img).astype(np.int32)
    if not next_image:
        return prev
    n_img = int(prev[-1]) if len(prev) else 0
    nxt = np.where(prev + 1 <= n_img, prev + 1, 0).astype(np.int32)
    return np.where(is_img, prev, nxt).astype(np.int32)


def loss_mask(ids: np.ndarray, length: int, vocab: Vocabulary, rule: str = "paper") -> np.ndarray:
    """float32[L] for targets ids[1:] of a (L+1)-id sequence with `length` real ids (module docstring)."""
    targets = ids[1:]
    real = np.arange(1, len(ids)) < length
    mask = real & (targets != vocab.image_id)
    if rule == "openflamingo":
        is_img = targets == vocab.image_id
        seen_img = np.cumsum(is_img) > 0
        # Targets after an <EOC> and before the next <image> are off; the <EOC> target itself counts.
        after_eoc = np.zeros_like(mask)
        inside = False
        for i, t in enumerate(targets):
            if t == vocab.image_id:
                inside = False
            after_eoc[i] = inside
            if t == vocab.eoc_id:
                inside = True
        mask &= seen_img & ~after_eoc
    elif rule != "paper":
        raise ValueError(f"loss rule must be 'paper' or 'openflamingo', got {rule!r}")
    return mask.astype(np.float32)


def shift(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(tokens int32[L], targets int32[L]) from int32[L+1]."""
    return ids[:-1].copy(), ids[1:].copy()
