"""Attention primitives: masking rules, grouped heads, rotary relative positions, ALiBi slopes."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flamingo_jax.models.attention import alibi_slopes, dot_product_attention, rotary_embedding


def _qkv(b=2, lq=5, lk=7, h=4, g=4, d=8, seed=0):
    k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
    return (jax.random.normal(k1,
                              (b, lq, h, d)), jax.random.normal(k2,
                                                                (b, lk, g, d)), jax.random.normal(k3, (b, lk, g, d)))


def test_fully_masked_rows_are_zero_and_others_normalised():
    q, k, v = _qkv()
    mask = jnp.ones((2, 1, 5, 7), bool).at[:, :, 1].set(False)
    out = dot_product_attention(q, k, v, mask)
    np.testing.assert_array_equal(out[:, 1], 0.0)
    ref = dot_product_attention(q[:, :1], k, v)
    np.testing.assert_allclose(out[:, :1], ref, rtol=1e-6, atol=1e-6)


def test_masked_keys_have_no_influence():
    q, k, v = _qkv()
    mask = jnp.ones((2, 1, 5, 7), bool).at[..., 3].set(False)
    out = dot_product_attention(q, k, v, mask)
    out2 = dot_product_attention(q, k.at[:, 3].set(100.0), v.at[:, 3].set(-50.0), mask)
    np.testing.assert_array_equal(out, out2)


def test_grouped_kv_heads_equal_repeated_heads():
    q, k, v = _qkv(h=4, g=2)
    grouped = dot_product_attention(q, k, v)
    repeated = dot_product_attention(q, jnp.repeat(k, 2, axis=2), jnp.repeat(v, 2, axis=2))
    np.testing.assert_allclose(grouped, repeated, rtol=1e-6, atol=1e-6)


def test_rotary_scores_depend_only_on_relative_position():
    q, k, _ = _qkv(b=1, lq=1, lk=1, h=1, g=1, d=8)

    def score(pq, pk):
        rq = rotary_embedding(q, jnp.array([[pq]]))
        rk = rotary_embedding(k, jnp.array([[pk]]))
        return float(jnp.sum(rq * rk))

    np.testing.assert_allclose(score(3, 1), score(10, 8), rtol=1e-5)
    assert abs(score(3, 1) - score(3, 2)) > 1e-4


def test_partial_rotary_leaves_the_rest_untouched():
    q, _, _ = _qkv(b=1, lq=3, h=2, d=8)
    out = rotary_embedding(q, jnp.arange(3)[None] + 5, rotary_dim=4)
    np.testing.assert_array_equal(out[..., 4:], q[..., 4:])


def _paper_alibi_slopes(n):
    """Press et al. 2022 (ALiBi), their reference get_slopes: for n a power of two the geometric sequence starting at
    2^(-8/n) with that ratio; otherwise the slopes of the closest power of two 2^k below n, then every other slope
    of 2^(k+1) heads (the first n - 2^k of them)."""

    def power_of_two(m):
        start = 2.0**(-(2.0**-(math.log2(m) - 3)))
        return [start * start**i for i in range(m)]

    if math.log2(n).is_integer():
        return power_of_two(n)
    k = 2**math.floor(math.log2(n))
    return power_of_two(k) + _paper_alibi_slopes(2 * k)[0::2][:n - k]


def test_alibi_slopes_match_the_power_of_two_formula():
    np.testing.assert_allclose(alibi_slopes(8), 2.0**-np.arange(1, 9), rtol=1e-6)


@pytest.mark.parametrize("heads", [1, 2, 3, 5, 6, 12, 16, 20, 40])
def test_alibi_slopes_match_the_papers_formula(heads):
    np.testing.assert_allclose(alibi_slopes(heads), _paper_alibi_slopes(heads), rtol=1e-6)
    if heads == 12:  # by hand: 2^-1 .. 2^-8, then 2^-0.5, 2^-1.5, 2^-2.5, 2^-3.5
        want = [2.0**-i for i in range(1, 9)] + [2.0**-(i + 0.5) for i in range(4)]
        np.testing.assert_allclose(alibi_slopes(12), want, rtol=1e-6)
