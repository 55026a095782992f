"""Mask-invariance properties of the Flamingo model, over seeded random cases.

Masking bugs recur in Flamingo implementations: OpenFlamingo #154 and #242, IDEFICS #26428 (text before the
first image still attended to images), #28591 (wrong masks with longest padding), #33499 (batch > 1 differs
from batch = 1). Each property below runs on CASES random cases of the tiny model (random left padding,
image counts, `<image>` positions, `<EOC>` markers, pad contents and pixels; every case's seed is printed
on failure with its padding and image positions) and has a control that proves it is sensitive: the tanh
gates start at 0, so at initialisation cross-attention adds nothing and every property would hold
trivially; the gates are set to GATE here and each control checks that what the property holds fixed
does change when it should, by far more than the tolerance.

Tolerances (fp32): outputs that the masks make independent of a change are compared EXACTLY (a masked key
gets weight exp(-huge) = 0 and a row with no visible key gets weights 0, so nothing of the change can
reach them); computations of different shapes (one row against a batch, cached against uncached) within
TOL = atol 2e-5, rtol 1e-5 on logits of magnitude ~1 (largest difference seen: 7e-6); controls must exceed SENSITIVE = 1e-3.

Previous-image rule (phi of the paper): a text token cross-attends only to the last image before it. In
the whole model a token still depends on EARLIER images through self-attention to earlier tokens (which
saw them), so the model-level property is "no later image, and no absent image slot, changes it"; the
strict form "no image but its own" is checked on the cross-attention layer itself (the model's layer 0
with its trained-shape params, on random hidden states).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flamingo_jax.evaluation import decoding
from flamingo_jax.models.xattn import default_media_index, media_mask
from tiny import IMAGE, VOCAB, init_params, set_gates, tiny_model_config

CASES = 16
B, L, T = 4, 16, 3  # rows, tokens, image slots of every batch (one compile per shape)
PREFILL = 10  # cached decoding: the prompt chunk, then L - PREFILL single-token steps
GATE = 0.8
TOL = dict(atol=2e-5, rtol=1e-5)
SENSITIVE = 1e-3


# ----------------------------------------------------------------------------------------------- the cases
@dataclasses.dataclass
class Case:
    seed: int
    tokens: np.ndarray  # int32[B, L], left-padded (pad slots hold random garbage ids)
    token_mask: np.ndarray  # bool[B, L]
    images: np.ndarray  # float32[B, T, 1, H, W, 3]; slots past a row's image count are garbage too
    image_mask: np.ndarray  # bool[B, T]
    pads: list[int]
    image_pos: list[list[int]]  # absolute positions of each row's <image> tokens

    def __str__(self):
        return (f"case seed={self.seed} B={self.tokens.shape[0]} L={self.tokens.shape[1]} T={self.images.shape[1]}"
                f" left pads={self.pads} <image> positions={self.image_pos}"
                f" image_mask={self.image_mask.astype(int).tolist()}")

    def real(self, i: int) -> slice:
        return slice(self.pads[i], self.tokens.shape[1])

    def first_image(self, i: int) -> int:
        """Absolute position of row i's first <image> (L when it has none)."""
        return self.image_pos[i][0] if self.image_pos[i] else self.tokens.shape[1]

    def media_index(self) -> np.ndarray:
        return np.asarray(default_media_index(jnp.asarray(self.tokens), CONFIG.image_token_id))


def make_case(seed: int, batch: int = B, length: int = L, slots: int = T, min_pad0: int = 0) -> Case:
    rng = np.random.default_rng(seed)
    img_id, eoc_id = CONFIG.image_token_id, CONFIG.eoc_token_id
    tokens = rng.integers(0, VOCAB, (batch, length)).astype(np.int32)
    token_mask = np.zeros((batch, length), bool)
    image_mask = np.zeros((batch, slots), bool)
    pads, image_pos = [], []
    for i in range(batch):
        pad = 0 if rng.random() < 0.25 else int(rng.integers(1, length - 3))
        if i == 0:
            pad = max(pad, min_pad0)
        n = length - pad
        m = int(rng.integers(0, min(slots, n) + 1))
        pos = sorted(int(p) + pad for p in rng.choice(n, m, replace=False))
        for j, p in enumerate(pos):
            tokens[i, p] = img_id
            if j and rng.random() < 0.5 and p - 1 > pos[j - 1]:
                tokens[i, p - 1] = eoc_id
        token_mask[i, pad:] = True
        image_mask[i, :m] = True
        pads.append(pad)
        image_pos.append(pos)
    imgs = rng.random((batch, slots, 1, IMAGE, IMAGE, 3)).astype(np.float32)
    return Case(seed, tokens, token_mask, imgs, image_mask, pads, image_pos)


def _max_diff(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a) - np.asarray(b)), initial=0.0))


def assert_close(case: Case, what: str, actual, expected, exact: bool = False):
    actual, expected = np.asarray(actual), np.asarray(expected)
    if exact:
        ok = np.array_equal(actual, expected)
    else:
        ok = np.allclose(actual, expected, **TOL)
    if not ok:
        bad = actual != expected if exact else ~np.isclose(actual, expected, **TOL)
        first = tuple(int(x) for x in np.argwhere(bad)[0])
        raise AssertionError(f"{case}\n{what}: max |diff| = {_max_diff(actual, expected):.3g} "
                             f"({'exact' if exact else TOL}), first at index {first} of the compared slice")


def assert_sensitive(case: Case, what: str, a, b):
    d = _max_diff(a, b)
    if not d > SENSITIVE:
        raise AssertionError(f"{case}\ncontrol {what}: max |diff| = {d:.3g}, not > {SENSITIVE}: the property "
                             "would pass even if the feature it checks were broken")


# ---------------------------------------------------------------------------------------------- the model
CONFIG = tiny_model_config("gated", num_layers=2, mask="previous")


@pytest.fixture(scope="module")
def tiny():
    """(model, params with every gate at GATE, jitted forward fwd(params, tokens, images, image_mask,
    token_mask) -> logits, jitted encode(params, images) -> visual tokens [B, T, K, Dv])."""
    toks = jnp.zeros((1, 4), jnp.int32)
    model, params, _ = init_params(CONFIG, toks, jnp.zeros((1, 1, 1, IMAGE, IMAGE, 3)), jnp.ones((1, 1), bool))
    params = set_gates(params, GATE)
    fwd = jax.jit(lambda p, t, i, m, tm: model.apply({"params": p}, t, i, m, None, tm))
    encode = jax.jit(lambda p, i: model.apply({"params": p}, i, method="encode"))
    return model, params, fwd, encode


def _run(tiny, case: Case, **changes):
    _, params, fwd, _ = tiny
    args = dict(tokens=case.tokens, images=case.images, image_mask=case.image_mask, token_mask=case.token_mask)
    args.update(changes)
    return np.asarray(fwd(params, *(jnp.asarray(args[k]) for k in ("tokens", "images", "image_mask", "token_mask"))))


SEEDS = range(CASES)


# -------------------------------------------------------------------------------------------- properties
def test_batch_of_rows_equals_each_row_alone(tiny):
    """IDEFICS #33499 / #28591: a row's logits on its real tokens do not depend on the other rows of its batch
    (their padding, image counts, images)."""
    for seed in SEEDS:
        case = make_case(1000 + seed)
        batch = _run(tiny, case)
        for i in range(B):
            alone = _run(tiny, case, tokens=case.tokens[i:i + 1], images=case.images[i:i + 1],
                         image_mask=case.image_mask[i:i + 1], token_mask=case.token_mask[i:i + 1])
            assert_close(case, f"row {i} in the batch vs alone", batch[i, case.real(i)], alone[0, case.real(i)])
        # Control: the same row alone with the next row's pixels differs, so leakage of another row's images
        # into this row would be seen.
        i = next((r for r in range(B) if case.image_pos[r]), None)
        if i is not None:
            j = (i + 1) % B
            other = _run(tiny, case, tokens=case.tokens[i:i + 1], images=case.images[j:j + 1],
                         image_mask=case.image_mask[i:i + 1], token_mask=case.token_mask[i:i + 1])
            assert_sensitive(case, f"row {i} alone with row {j}'s pixels", batch[i, case.real(i)], other[0,
                                                                                                         case.real(i)])


def _right_padded(case: Case) -> tuple[np.ndarray, np.ndarray]:
    """The same rows with their real tokens first and the padding (other garbage ids) after them."""
    rng = np.random.default_rng(case.seed + 7)
    tokens = rng.integers(0, VOCAB, case.tokens.shape).astype(np.int32)
    mask = np.zeros_like(case.token_mask)
    for i, p in enumerate(case.pads):
        n = case.tokens.shape[1] - p
        tokens[i, :n] = case.tokens[i, p:]
        mask[i, :n] = True
    return tokens, mask


def test_left_padding_changes_nothing_on_the_real_tokens(tiny):
    """Left padding (any amount, any pad ids) gives the real tokens the logits they have unpadded: compared
    with the same rows right-padded (which causal attention makes invisible to the real tokens)."""
    for seed in SEEDS:
        case = make_case(2000 + seed, min_pad0=2)
        left = _run(tiny, case)
        tokens, mask = _right_padded(case)
        right = _run(tiny, case, tokens=tokens, token_mask=mask)
        for i, p in enumerate(case.pads):
            assert_close(case, f"row {i}: left-padded by {p} vs unpadded", left[i, p:], right[i, :L - p])
        # Control: without the padding mask (pads attended, positions counted from the first pad) row 0, which
        # has at least 2 pads, changes.
        unmasked = _run(tiny, case, token_mask=np.ones_like(case.token_mask))
        assert_sensitive(case, "row 0 with its pads unmasked", unmasked[0, case.pads[0]:], right[0, :L - case.pads[0]])


def test_text_before_the_first_image_gets_no_cross_attention(tiny):
    """IDEFICS #26428: tokens before a row's first <image> (all its tokens when it has none) have exactly the
    same logits whatever the images are (other pixels, zeros), so cross-attention contributes exactly 0."""
    checked = 0
    for seed in SEEDS:
        case = make_case(3000 + seed)
        base = _run(tiny, case)
        other = _run(tiny, case, images=np.random.default_rng(case.seed + 1).random(case.images.shape, np.float32))
        zeros = _run(tiny, case, images=np.zeros_like(case.images))
        for i in range(B):
            before = slice(case.pads[i], case.first_image(i))
            assert_close(case, f"row {i}, tokens before the first image, other images", other[i, before],
                         base[i, before], exact=True)
            assert_close(case, f"row {i}, tokens before the first image, zero images", zeros[i, before],
                         base[i, before], exact=True)
            if case.image_pos[i]:  # control: from the first <image> on, the tokens do see the images
                after = slice(case.first_image(i), L)
                assert_sensitive(case, f"row {i}, tokens from the first image on", other[i, after], base[i, after])
                checked += 1
    assert checked >= len(SEEDS)  # the control ran on most rows (rows without images have none)


def test_no_later_image_and_no_absent_image_changes_a_token(tiny):
    """The previous-image rule at the model level: changing image j leaves exactly unchanged every token
    that has seen fewer than j <image> tokens; changing an absent slot (image_mask False) changes nothing."""
    for seed in SEEDS:
        case = make_case(4000 + seed)
        base = _run(tiny, case)
        idx = case.media_index()
        rng = np.random.default_rng(case.seed + 1)
        for j in range(1, T + 1):
            imgs = case.images.copy()
            imgs[:, j - 1] = rng.random(imgs[:, j - 1].shape)
            out = _run(tiny, case, images=imgs)
            for i in range(B):
                real = case.token_mask[i]
                if not case.image_mask[i, j - 1]:
                    assert_close(case, f"row {i}: absent image slot {j} changed", out[i, real], base[i, real],
                                 exact=True)
                    continue
                keep = real & (idx[i] < j)
                assert_close(case, f"row {i}: image {j} changed, tokens that saw < {j} images", out[i, keep],
                             base[i, keep], exact=True)
                # Control: the tokens whose own image is j change.
                assert_sensitive(case, f"row {i}: image {j} changed, tokens of image {j}", out[i, real & (idx[i] == j)],
                                 base[i, real & (idx[i] == j)])


@pytest.fixture(scope="module")
def xattn_layer(tiny):
    """The model's first cross-attention layer (its params) as a jitted function of (hidden [B, L, D], visual
    [B, T*K, Dv], media_index [B, L], image_mask [B, T]) -> its output minus its input."""
    model, params, _, encode = tiny

    def layer(module, h, visual, media_index, image_mask):
        k = visual.shape[1] // image_mask.shape[1]
        xmask = media_mask(media_index, image_mask, k, CONFIG.xattn.mask)
        block = module.xattn.block()
        return block.apply({"params": module.xattn.layer_params[0]}, h, visual, xmask) - h

    run = jax.jit(lambda p, *a: model.apply({"params": p}, *a, method=layer))
    return lambda *a: np.asarray(run(params, *a)), lambda i: encode(params, i)


def test_cross_attention_layer_sees_only_the_tokens_own_image(xattn_layer):
    """The previous-image rule, strict form: the layer's output at a token changes when its own image
    (media_index) changes and is exactly unchanged when any other image changes; tokens before the first
    image (media_index 0) get exactly zero from cross-attention (their FFW part depends on their input only)."""
    run, encode = xattn_layer
    d = CONFIG.lm.d_model
    for seed in SEEDS:
        case = make_case(5000 + seed)
        rng = np.random.default_rng(case.seed + 1)
        h = rng.standard_normal((B, L, d)).astype(np.float32)
        visual = np.asarray(encode(jnp.asarray(case.images)))  # [B, T, K, Dv]
        k = visual.shape[2]
        idx = case.media_index()
        flat = lambda v: v.reshape(B, T * k, -1)  # noqa: E731
        base = run(h, flat(visual), idx, case.image_mask)
        zero_visual = run(h, flat(np.zeros_like(visual)), idx, case.image_mask)
        none = idx == 0
        assert_close(case, "tokens before the first image, visual tokens zeroed", zero_visual[none], base[none],
                     exact=True)
        for j in range(1, T + 1):
            changed = visual.copy()
            changed[:, j - 1] = rng.standard_normal(changed[:, j - 1].shape)
            out = run(h, flat(changed), idx, case.image_mask)
            own = (idx == j) & case.image_mask[:, j - 1][:, None]
            assert_close(case, f"image {j} changed, tokens of other images", out[~own], base[~own], exact=True)
            if own.any():
                assert_sensitive(case, f"image {j} changed, its own tokens", out[own], base[own])


@pytest.fixture(scope="module")
def cached(tiny):
    """Incremental decoding with the KV cache: Flamingo.decode on a prompt chunk then one token per step."""
    model, params, _, encode = tiny
    empty = jax.jit(lambda p: model.apply({"params": p}, B, L, method="init_cache"))(params)
    step = jax.jit(lambda p, t, v, m, tm, c: model.apply({"params": p}, t, v, m, None, tm, c, method="decode"))

    def run(case: Case, break_positions: bool = False):
        visual = encode(params, jnp.asarray(case.images))
        cache = dict(empty, lm=dict(empty["lm"]))  # copies what break_positions replaces
        mask = jnp.asarray(case.image_mask)
        chunks = [(0, PREFILL)] + [(t, t + 1) for t in range(PREFILL, L)]
        outs = []
        for a, b in chunks:
            if break_positions and a >= PREFILL:
                cache["lm"]["next_position"] = jnp.zeros_like(cache["lm"]["next_position"])
            logits, cache = step(params, jnp.asarray(case.tokens[:, a:b]), visual, mask,
                                 jnp.asarray(case.token_mask[:, a:b]), cache)
            outs.append(np.asarray(logits))
        return np.concatenate(outs, axis=1)

    return run


def test_cached_decoding_equals_the_uncached_forward(tiny, cached):
    """The KV cache (prompt chunk, then one token per step; images anywhere, also in the stepped part, so the
    cache's image count matters) gives the uncached forward's logits on every real token."""
    for seed in SEEDS:
        case = make_case(6000 + seed)
        full = _run(tiny, case)
        inc = cached(case)
        for i in range(B):
            assert_close(case, f"row {i}: cached vs uncached", inc[i, case.real(i)], full[i, case.real(i)])
        # Control: a cache that forgets the positions of its tokens (next_position reset at every step) gives
        # other logits on the stepped tokens.
        broken = cached(case, break_positions=True)
        assert_sensitive(case, "cache with next_position reset", broken[:, PREFILL:], full[:, PREFILL:])


@pytest.fixture(scope="module")
def decoder(tiny):
    """The evaluation decoder's path (flamingo_jax.evaluation.decoding, as generate() runs it): the prompt
    prefilled once into a prefix (visual keys/values projected once, the last image's kept), then the
    continuation one token per step on the prefix plus the rows' own cache."""
    model, params, _, encode = tiny
    dec = decoding.Decoder(model, pad_id=0)
    own = jax.jit(lambda p, prefix: dec._own_cache(p, prefix, B, L - PREFILL))
    step = jax.jit(lambda p, prefix, tok, cache: dec._step(p, prefix, tok, cache, jnp.zeros((), bool)))

    def run(case: Case) -> np.ndarray:
        """log-probs [B, steps + 1, V] after the prompt's last token and after each continuation token but
        the last."""
        visual = encode(params, jnp.asarray(case.images))
        prefix = dec.prefill(params, case.tokens[:, :PREFILL], case.token_mask[:, :PREFILL], visual, case.image_mask)
        cache = own(params, prefix)
        outs = [np.asarray(prefix["logp"])]
        for t in range(PREFILL, L - 1):
            logp, cache = step(params, prefix, jnp.asarray(case.tokens[:, t]), cache)
            outs.append(np.asarray(logp))
        return np.stack(outs, axis=1)

    return run


def test_prefix_decoding_equals_the_uncached_forward(tiny, decoder):
    """generate()'s path: a left-padded prompt with its images prefilled once, then continuation tokens (text
    and <EOC>: continuations bring no images) on the cached prefix: the log-probs of the uncached forward."""
    for seed in SEEDS:
        case = make_case(7000 + seed)
        for i in range(B):  # the continuation: real text (the prompt keeps at least one real token)
            case.pads[i] = min(case.pads[i], PREFILL - 1)
            case.token_mask[i] = np.arange(L) >= case.pads[i]
            case.image_pos[i] = [p for p in case.image_pos[i] if p < PREFILL]
            case.image_mask[i] = np.arange(T) < len(case.image_pos[i])
        case.tokens[:, PREFILL:][case.tokens[:, PREFILL:] == CONFIG.image_token_id] = 1
        full = np.asarray(jax.nn.log_softmax(_run(tiny, case), -1))[:, PREFILL - 1:L - 1]
        inc = decoder(case)
        assert_close(case, "prefix decoding vs uncached log-probs", inc, full)
        # Control: the continuation's log-probs depend on the prompt's images (which the prefix caches).
        other = _run(tiny, case, images=np.random.default_rng(case.seed + 1).random(case.images.shape, np.float32))
        rows = [i for i in range(B) if case.image_pos[i]]
        if rows:
            other = np.asarray(jax.nn.log_softmax(other, -1))[:, PREFILL - 1:L - 1]
            assert_sensitive(case, "the prompt's images replaced", other[rows], full[rows])
