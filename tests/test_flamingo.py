"""The Flamingo composite: exact LM equivalence at zero gates, cached decoding, video, params layout."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flamingo_jax.models import SUBTREES, build, xattn_config
from flamingo_jax.models.lm import DecoderLM
from flamingo_jax.models.schedule import Segment, layer_schedule
from tiny import VOCAB, images, init_params, set_gates, tiny_model_config, tokens_with_images

B, T, L = 2, 3, 12
IMAGE_MASK = jnp.array([[True, True, False], [True, True, True]])
VARIANTS = [("gated", False), ("gated", True), ("vanilla", False), ("vanilla", True), ("grafting", False),
            ("grafting", True)]


@pytest.fixture(scope="module", params=VARIANTS, ids=lambda v: f"{v[0]}-{'scan' if v[1] else 'loop'}")
def variant(request):
    kind, scan = request.param
    config = tiny_model_config(kind, scan=scan, every=2 if kind != "grafting" else 1)
    tokens = tokens_with_images(config, B, L)
    imgs = images(B, T)
    model, params, boxed = init_params(config, tokens, imgs, IMAGE_MASK)
    return config, model, params, boxed, tokens, imgs


def test_zero_gates_give_exactly_the_frozen_lm(variant):
    config, model, params, _, _, imgs = variant
    text = jax.random.randint(jax.random.key(3), (B, L), 0, VOCAB)  # no added tokens: the LM can read it
    media_index = jnp.asarray(np.minimum(np.arange(L) // 3, 3)[None].repeat(B, 0), jnp.int32)
    apply = jax.jit(model.apply)
    flamingo = apply({"params": set_gates(params, 0.0)}, text, imgs, IMAGE_MASK, media_index)
    lm_alone, _ = jax.jit(DecoderLM(config.lm).apply)({"params": params["lm"]}, text)
    np.testing.assert_array_equal(flamingo[..., :VOCAB], lm_alone)
    gated = apply({"params": set_gates(params, 0.5)}, text, imgs, IMAGE_MASK, media_index)
    assert float(jnp.abs(gated[..., :VOCAB] - lm_alone).max()) > 1e-3  # the images do reach the text


def test_cached_decoding_equals_full_recomputation(variant):
    config, model, params, _, tokens, imgs = variant
    params = set_gates(params, 0.5)
    full = jax.jit(model.apply)({"params": params}, tokens, imgs, IMAGE_MASK)
    visual = model.apply({"params": params}, imgs, method=model.encode)
    cache = model.apply({"params": params}, B, 16, method=model.init_cache)
    step = jax.jit(lambda t, c: model.apply({"params": params}, t, visual, IMAGE_MASK, cache=c, method=model.decode))
    logits, cache = step(tokens[:, :5], cache)
    outs = [logits]
    for t in range(5, L):
        logits, cache = step(tokens[:, t:t + 1], cache)
        outs.append(logits)
    np.testing.assert_allclose(jnp.concatenate(outs, 1), full, atol=3e-5, rtol=1e-5)


def test_params_split_into_top_level_subtrees_with_logical_names(variant):
    _, _, params, boxed, _, _ = variant
    assert set(params) == set(SUBTREES)
    leaves = jax.tree_util.tree_leaves_with_path(boxed["params"], is_leaf=lambda x: isinstance(x, nn.Partitioned))
    unnamed = [
        jax.tree_util.keystr(p) for p, x in leaves
        if not isinstance(x, nn.LogicallyPartitioned) or len(x.names) != x.value.ndim
    ]
    assert not unnamed, f"params without logical axis names: {unnamed}"


def test_gates_start_at_zero(variant):
    _, _, params, _, _, _ = variant
    gates = [x for p, x in jax.tree_util.tree_leaves_with_path(params["xattn"]) if "gate" in jax.tree_util.keystr(p)]
    assert gates and all(float(jnp.abs(g).max()) == 0.0 for g in gates)


def test_without_tanh_gating_the_images_change_the_output_at_init():
    config = tiny_model_config("gated", gating=False)
    tokens = tokens_with_images(config, B, L)
    imgs = images(B, T)
    model, params, _ = init_params(config, tokens, imgs, IMAGE_MASK)
    assert not any("gate" in jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(params))
    out = model.apply({"params": params}, tokens, imgs, IMAGE_MASK)
    out2 = model.apply({"params": params}, tokens, imgs.at[:, 0].add(0.5), IMAGE_MASK)
    assert float(jnp.abs(out - out2)[:, 2:].max()) > 1e-4


def test_video_frames_with_temporal_embeddings_and_interpolation():
    config = tiny_model_config("gated", max_frames=2)
    tokens = tokens_with_images(config, 1, L, image_positions=(1, ))
    clip = images(1, 1, frames=2)
    model, params, _ = init_params(config, tokens, clip, jnp.ones((1, 1), bool))
    assert params["resampler"]["time_embeddings"].shape[0] == 2
    params = set_gates(params, 0.5)
    apply = jax.jit(model.apply)
    out = apply({"params": params}, tokens, clip, jnp.ones((1, 1), bool))
    reversed_clip = apply({"params": params}, tokens, clip[:, :, ::-1], jnp.ones((1, 1), bool))
    assert float(jnp.abs(out - reversed_clip).max()) > 1e-5  # frame order matters through time embeddings
    longer = images(1, 1, frames=5, seed=1)  # more frames than trained: interpolated temporal embeddings
    assert apply({"params": params}, tokens, longer, jnp.ones((1, 1), bool)).shape == (1, L, VOCAB + 2)


def test_precision_policy_stores_frozen_params_in_bf16():
    config = tiny_model_config("gated")
    config.dtype = "bfloat16"
    config.param_dtype.vision = config.param_dtype.lm = "bfloat16"
    tokens = tokens_with_images(config, 1, 8, image_positions=(1, ))
    imgs = images(1, 1)
    shapes = jax.eval_shape(
        lambda: nn.meta.unbox(build(config).init(jax.random.key(0), tokens, imgs, jnp.ones((1, 1), bool))))["params"]
    dtypes = {k: {x.dtype for x in jax.tree.leaves(v)} for k, v in shapes.items()}
    assert dtypes["vision"] == dtypes["lm"] == {jnp.dtype("bfloat16")}
    assert dtypes["resampler"] == dtypes["xattn"] == dtypes["new_tokens"] == {jnp.dtype("float32")}


def test_image_token_sees_its_own_image_and_earlier_text_sees_none(variant):
    config, model, params, _, tokens, imgs = variant
    params = set_gates(params, 0.5)
    apply = jax.jit(model.apply)
    base = apply({"params": params}, tokens, imgs, IMAGE_MASK)
    changed = apply({"params": params}, tokens, imgs.at[:, 0].add(0.5), IMAGE_MASK)  # image 1
    diff = jnp.abs(changed - base).max(-1)
    assert int(tokens[0, 2]) == config.image_token_id
    np.testing.assert_array_equal(diff[:, :2], 0.0)  # text before the first image
    assert float(diff[:, 2].min()) > 1e-6  # the <image> token itself already sees image 1


def test_remat_gives_the_same_loss_and_gradients(variant):
    """model.remat recomputes activations in the backward pass: the same loss and gradients ('full' on every
    variant, 'dots' on the gated ones), and fewer residuals kept for the backward pass than without it."""
    config, _, params, _, tokens, imgs = variant
    params = set_gates(params, 0.5)

    def loss(model):
        return lambda p: jnp.mean(jnp.square(model.apply({"params": p}, tokens, imgs, IMAGE_MASK)))

    def residual_bytes(model):  # what jax keeps from the forward pass for the backward pass (shapes only)
        shapes = jax.eval_shape(lambda p: jax.tree.leaves(jax.vjp(loss(model), p)[1]), params)
        return sum(x.size * x.dtype.itemsize for x in shapes)

    plain = build(config)
    l0, g0 = jax.jit(jax.value_and_grad(loss(plain)))(params)
    for policy in ("full", "dots") if config.xattn.kind == "gated" else ("full", ):
        remat_config = config.copy_and_resolve_references()
        remat_config.remat = policy
        remat = build(remat_config)
        l1, g1 = jax.jit(jax.value_and_grad(loss(remat)))(params)
        np.testing.assert_allclose(l1, l0, rtol=1e-6)
        for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(g1), jax.tree.leaves(g0)):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=f"{policy} {jax.tree_util.keystr(path)}")
        if policy == "full":
            assert residual_bytes(remat) < residual_bytes(plain)


def test_layer_schedule_is_the_papers_placement_as_data():
    """Segments of LM layers with the cross-attention layer before each; evenly spaced segments fold into one
    scanned Segment with stacked params, a shorter last one stays apart."""
    gated = lambda **kw: xattn_config("gated", **kw)  # noqa: E731
    assert layer_schedule(gated(every=2), 5, False) == (Segment(0, 0, 2), Segment(1, 2, 4), Segment(2, 4, 5))
    assert layer_schedule(gated(every=2), 5, True) == (Segment(0, 0, 2, scan=2), Segment(2, 4, 5))
    assert layer_schedule(gated(every=2), 4, True) == (Segment(0, 0, 2, scan=2), )
    assert layer_schedule(gated(every=2, offset=1), 4, False) == (Segment(None, 0, 1), Segment(0, 1,
                                                                                               3), Segment(1, 3, 4))
    assert layer_schedule(gated(placement="middle"), 4, True) == (Segment(None, 0, 2), Segment(0, 2, 4))
    assert layer_schedule(gated(placement="list", layers=(0, 2)), 5, True) == (Segment(0, 0, 2,
                                                                                       scan=1), Segment(1, 2, 5))
    assert layer_schedule(xattn_config("grafting", every=2), 4,
                          False) == (Segment(None, 0, 4, remat=False), Segment(0, 4, 4), Segment(1, 4, 4))
    assert layer_schedule(xattn_config("grafting", every=2), 4,
                          True) == (Segment(None, 0, 4, remat=False), Segment(0, 4, 4, scan=2))


def _stacked(params, subtree):
    """Per-layer params layers_0 .. layers_{n-1} of a subtree -> one `layers` tree stacked on axis 0."""
    tree = dict(params[subtree])
    names = sorted((k for k in tree if k.startswith("layers_")), key=lambda k: int(k.split("_")[1]))
    tree["layers"] = jax.tree.map(lambda *xs: jnp.stack(xs), *[tree.pop(k) for k in names])
    return dict(params, **{subtree: tree})


@pytest.mark.parametrize("kind,placement", [("gated", (0, 2)), ("vanilla", (1, 3)), ("grafting", (0, 1))])
def test_stacked_layers_compute_what_per_layer_params_compute(kind, placement):
    """The scanned schedule (stacked params) gives the per-layer schedule's logits, also for evenly spaced
    cross-attention layers whose last segment is longer than the stride (gated, layers 0 and 2 of 5)."""
    config = tiny_model_config(kind, placement="list", num_layers=5)
    config.xattn.layers = placement
    tokens = tokens_with_images(config, B, L)
    imgs = images(B, T)
    _, params, _ = init_params(config, tokens, imgs, IMAGE_MASK)
    params = set_gates(params, 0.5)
    loop = jax.jit(build(config).apply)({"params": params}, tokens, imgs, IMAGE_MASK)
    scan_config = config.copy_and_resolve_references()
    scan_config.lm.scan_layers = True
    stacked = _stacked(_stacked(params, "lm"), "xattn")
    scan = jax.jit(build(scan_config).apply)({"params": stacked}, tokens, imgs, IMAGE_MASK)
    np.testing.assert_allclose(scan, loop, rtol=1e-5, atol=1e-5)
