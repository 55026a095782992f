"""The decoder LM: every family runs, KV-cached decoding equals full recomputation, left padding."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flamingo_jax.models.lm import FAMILIES, DecoderLM, lm_config
from tiny import KEY


def _model(family, scan=False):
    c = lm_config(family, vocab_size=50, d_model=32, num_layers=3, num_heads=4, max_len=64, scan_layers=scan,
                  num_kv_heads=2 if family == "llama" else 0)
    return DecoderLM(c)


def _tokens(b=2, l=10, seed=0):
    return jax.random.randint(jax.random.key(seed), (b, l), 0, 50)


CASES = [(f, False) for f in FAMILIES] + [("llama", True), ("neox", True)]


@pytest.mark.parametrize("family,scan", CASES)
def test_cached_decoding_equals_full_recomputation(family, scan):
    m = _model(family, scan)
    toks = _tokens()
    params = nn.meta.unbox(m.init(KEY, toks))
    cache = m.apply(params, 2, 16, method=m.init_cache)
    step = jax.jit(lambda p, t, c: m.apply(p, t, cache=c))
    logits, cache = step(params, toks[:, :6], cache)
    outs = [logits]
    for t in range(6, 10):  # teacher-forced, one token at a time
        logits, cache = step(params, toks[:, t:t + 1], cache)
        outs.append(logits)
    seq = toks
    for _ in range(3):  # then greedy
        nxt = jnp.argmax(logits[:, -1], -1)[:, None]
        seq = jnp.concatenate([seq, nxt], 1)
        logits, cache = step(params, nxt, cache)
        outs.append(logits)
    full, _ = jax.jit(m.apply)(params, seq)
    np.testing.assert_allclose(jnp.concatenate(outs, 1), full, atol=2e-5, rtol=1e-5)
    # Token for token: the recomputed model picks the same greedy continuation.
    np.testing.assert_array_equal(jnp.argmax(full[:, 9:12], -1), seq[:, 10:13])


@pytest.mark.parametrize("family", ["llama", "gpt2", "mpt"])
def test_left_padding_does_not_change_a_row(family):
    m = _model(family)
    toks = _tokens(b=1, l=6)
    params = nn.meta.unbox(m.init(KEY, toks))
    alone, _ = m.apply(params, toks)
    padded = jnp.concatenate([jnp.zeros((1, 3), toks.dtype), toks], 1)
    mask = jnp.arange(9)[None] >= 3
    out, _ = m.apply(params, padded, token_mask=mask)
    np.testing.assert_allclose(out[:, 3:], alone, atol=2e-5, rtol=1e-5)


def test_unknown_family_and_field_are_errors():
    with pytest.raises(ValueError, match="unknown LM family"):
        lm_config("bert")
    with pytest.raises(KeyError, match="unknown LM field"):
        lm_config("llama", n_layer=3)
