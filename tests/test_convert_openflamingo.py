"""Parity with OpenFlamingo 2.0.1 and open_clip 2.24.0 (PyTorch, CPU).

A tiny random OpenFlamingo is built in-process from the unmodified model files, loaded by path (the
`open_flamingo` package __init__ imports open_clip's factory and torchvision, which has no CPU build here);
the vision tower is open_clip's real VisionTransformer, also loaded by path. Its checkpoint is written the way
OpenFlamingo's training code writes it (filter_state_dict_to_trainable), the LM with save_pretrained, the
vision tower as an open_clip CLIP state dict; then converted with the CLI and compared: logits within 1e-4
on sequences with several images and text before the first one, non-zero gates, and cached greedy
generation identical to OpenFlamingo's generate().
"""

from __future__ import annotations

import collections.abc
import importlib.util
import itertools
import os
import sys
import types

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("einops")
pytest.importorskip("einops_exts")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from flamingo_jax.convert import convert_open_clip, load_converted, read_manifest  # noqa: E402
from flamingo_jax.convert.__main__ import main as cli  # noqa: E402
from flamingo_jax.convert.parity import flamingo_greedy  # noqa: E402
from flamingo_jax.models import build  # noqa: E402
from flamingo_jax.models.flamingo import zeros_gates  # noqa: E402
from flamingo_jax.models.vision import CLIP_MEAN, CLIP_STD, build_vision  # noqa: E402

pytestmark = pytest.mark.parity

TOL = 1e-4
VOCAB, IMG, PATCH, VW = 96, 32, 8, 128
EOC, MEDIA, PAD = VOCAB, VOCAB + 1, VOCAB + 2
STEPS = 5

# ----------------------------------------------------------------------------- loading by path


def _package_dir(name: str) -> str | None:
    spec = importlib.util.find_spec(name)  # a top-level package: its __init__ is not executed
    return None if spec is None or not spec.submodule_search_locations else list(spec.submodule_search_locations)[0]


def _load(pkg: str, src: str, modules: list[str], pre: dict | None = None) -> dict:
    if pkg in sys.modules:
        return {m: sys.modules[f"{pkg}.{m}"] for m in modules}
    package = types.ModuleType(pkg)
    package.__path__ = [src]
    sys.modules[pkg] = package
    for name, mod in (pre or {}).items():
        sys.modules[f"{pkg}.{name}"] = mod
    out = {}
    for m in modules:
        spec = importlib.util.spec_from_file_location(f"{pkg}.{m}", os.path.join(src, f"{m}.py"))
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
        out[m] = module
    return out


def _to_2tuple(x):
    return tuple(x) if isinstance(x, collections.abc.Iterable) and not isinstance(x, str) else tuple(
        itertools.repeat(x, 2))


def load_refs():
    """The OpenFlamingo and open_clip reference modules (loaded from their installed sources), or a skip."""
    of_dir, oc_dir = _package_dir("open_flamingo"), _package_dir("open_clip")
    if of_dir is None or oc_dir is None:
        pytest.skip("open-flamingo==2.0.1 and open_clip_torch==2.24.0 (installed with --no-deps) are needed")
    utils_stub = types.ModuleType("fj_open_clip.utils")
    utils_stub.to_2tuple = _to_2tuple  # open_clip.utils is the only torchvision importer on this path
    oc = _load("fj_open_clip", oc_dir, ["pos_embed", "transformer"], pre={"utils": utils_stub})["transformer"]
    of = _load("fj_open_flamingo", os.path.join(of_dir, "src"), ["utils", "helpers", "flamingo_lm", "flamingo"])
    return oc, of


@pytest.fixture(scope="module")
def refs():
    return load_refs()


def randomize(module, seed: int, skip: tuple[str, ...] = ()) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if any(s in name for s in skip):
                continue
            if p.dim() == 1 and ("norm" in name or "ln" in name):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            elif p.dim() <= 1:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            elif "emb" in name or "wte" in name or "latents" in name:
                p.copy_(torch.randn(p.shape, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) / p.shape[-1]**0.5)


def open_clip_visual(oc, *, act, final_ln_after_pool: bool, seed: int):
    torch.manual_seed(seed)
    visual = oc.VisionTransformer(image_size=IMG, patch_size=PATCH, width=VW, layers=2, heads=VW // 64, mlp_ratio=4.0,
                                  output_dim=32, output_tokens=True, final_ln_after_pool=final_ln_after_pool,
                                  act_layer=oc.QuickGELU if act == "quick_gelu" else torch.nn.GELU)
    randomize(visual, seed)
    return visual.eval()


def images(n_rows: int, n_img: int, seed: int = 0):
    """Ours: [B, T, 1, H, W, C] in [0, 1]; OpenFlamingo's: normalised [B, T, 1, C, H, W]."""
    x = np.random.default_rng(seed).uniform(0, 1, (n_rows, n_img, 1, IMG, IMG, 3)).astype(np.float32)
    normed = (x - np.asarray(CLIP_MEAN, np.float32)) / np.asarray(CLIP_STD, np.float32)
    return x, torch.tensor(normed.transpose(0, 1, 2, 5, 3, 4).copy())


# ------------------------------------------------------------------------------------- vision


@pytest.mark.parametrize("act,ln_post", [("gelu", True), ("quick_gelu", False)])
def test_open_clip_vision(refs, tmp_path, act, ln_post):
    oc, _ = refs
    visual = open_clip_visual(oc, act=act, final_ln_after_pool=not ln_post, seed=3)
    path = str(tmp_path / "visual.pt")
    torch.save(visual.state_dict(), path)  # a bare VisionTransformer state dict (no `visual.` prefix)
    result = convert_open_clip(path, act=act, ln_post=ln_post)
    assert result.config.heads == VW // 64 and result.config.layers == 2
    x, xt = images(1, 3, seed=4)
    with torch.no_grad():
        ref = visual(xt[0, :, 0])[1].numpy()
    out = build_vision(result.config).apply({"params": result.params}, jnp.asarray(x[0, :, 0]))
    diff = float(np.max(np.abs(np.asarray(out) - ref)))
    print(f"\n[parity] vision open_clip act={act} ln_post={ln_post}: max |tokens - open_clip| = {diff:.2e}")
    assert diff < TOL


# ------------------------------------------------------------------------------- OpenFlamingo


def build_lm(kind: str, d: int, layers: int):
    tf = transformers
    if kind == "mpt":
        # Like MPT-7B (50432 rows for a 50277-token tokenizer), the LM's table is larger than the tokenizer:
        # OpenFlamingo's resize_token_embeddings(len(tokenizer)) truncates it.
        return tf.MptForCausalLM(
            tf.MptConfig(vocab_size=VOCAB + 8, d_model=d, n_layers=layers, n_heads=4,
                         max_seq_len=64)), "transformer.blocks"
    return tf.LlamaForCausalLM(
        tf.LlamaConfig(vocab_size=VOCAB, hidden_size=d, intermediate_size=2 * d, num_hidden_layers=layers,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)), "model.layers"


def filter_state_dict_to_trainable(model, state_dict):
    """open_flamingo/train/train_utils.py (2.0.1), minus its FSDP branches."""
    for name, p in model.named_parameters():
        if "embed" in name or isinstance(p, torch.nn.Embedding):
            continue
        if not p.requires_grad and name in state_dict:
            del state_dict[name]
    for name in [
            n for n in state_dict if "lang_encoder.old_decoder_blocks" in n or
            "lang_encoder.gated_cross_attn_layers" in n or "vision_encoder" in n
    ]:
        del state_dict[name]
    return state_dict


def build_openflamingo(refs, tmp_path, lm_kind: str, layers: int, every: int):
    oc, of = refs
    lm, attr = build_lm(lm_kind, 64, layers)
    randomize(lm, seed=5)
    lm.save_pretrained(str(tmp_path / "lm"))  # the LM as released on the hub: base vocabulary
    visual = open_clip_visual(oc, act="quick_gelu", final_ln_after_pool=True, seed=6)
    vision_sd = {f"visual.{k}": v for k, v in visual.state_dict().items()}
    vision_sd.update({"token_embedding.weight": torch.zeros(10, 8), "logit_scale": torch.ones(())})  # text tower
    vision_path = str(tmp_path / ("vision.bin" if lm_kind == "mpt" else "vision.safetensors"))
    if lm_kind == "mpt":
        torch.save(vision_sd, vision_path)
    else:
        from safetensors.torch import save_file
        save_file({k: v.contiguous() for k, v in vision_sd.items()}, vision_path)

    encoder = torch.nn.Module()
    encoder.visual = visual
    of["utils"].extend_instance(lm, of["flamingo_lm"].FlamingoLMMixin)  # as factory.py does
    lm.set_decoder_layers_attr_name(attr)
    lm.resize_token_embeddings(VOCAB + 3)
    model = of["flamingo"].Flamingo(encoder, lm, EOC, MEDIA, vis_dim=VW, cross_attn_every_n_layers=every)
    model.requires_grad_(False)
    model.perceiver.requires_grad_(True)
    model.lang_encoder.gated_cross_attn_layers.requires_grad_(True)
    model.lang_encoder.get_input_embeddings().requires_grad_(True)
    randomize(model.perceiver, seed=7)
    randomize(model.lang_encoder.gated_cross_attn_layers, seed=8)
    with torch.no_grad():
        g = torch.Generator().manual_seed(9)
        emb = model.lang_encoder.get_input_embeddings().weight
        emb[VOCAB:] = torch.randn(3, emb.shape[1], generator=g)
        for i, block in enumerate(model.lang_encoder.gated_cross_attn_layers):
            if block is not None:
                block.attn_gate.fill_(0.5 + 0.1 * i)
                block.ff_gate.fill_(-0.4 + 0.1 * i)
        if not lm.config.tie_word_embeddings:
            # OpenFlamingo leaves the added tokens' output rows random and unsaved; the converter zeroes them.
            lm.get_output_embeddings().weight[VOCAB:] = 0.0
    sd = filter_state_dict_to_trainable(model, model.state_dict())
    ckpt = str(tmp_path / "checkpoint.pt")
    torch.save(sd if lm_kind == "mpt" else {"model_state_dict": sd, "epoch": 0}, ckpt)
    return model.eval(), ckpt, str(tmp_path / "lm"), vision_path


def tokens_with_images(n_img: int = 3):
    """Two rows, no padding, text before the first image; <image> ... <|endofchunk|> chunks."""
    g = np.random.default_rng(10)
    rows = []
    for lead in (2, 1):
        seq = list(g.integers(0, VOCAB, lead))
        for k in range(n_img):
            seq += [MEDIA] + list(g.integers(0, VOCAB, 3 + (k + lead) % 2)) + [EOC]
        rows.append(seq)
    length = min(map(len, rows))
    return np.asarray([r[:length] for r in rows], np.int64)


@pytest.mark.parametrize("lm_kind,layers,every", [("mpt", 4, 2), ("llama", 2, 1)])
def test_openflamingo_parity(refs, tmp_path, lm_kind, layers, every):
    model, ckpt, lm_dir, vision = build_openflamingo(refs, tmp_path, lm_kind, layers, every)
    tokens = tokens_with_images()
    x, xt = images(2, 3, seed=11)
    mask = torch.ones(tokens.shape, dtype=torch.long)
    with torch.no_grad():
        ref_logits = model(vision_x=xt, lang_x=torch.tensor(tokens), attention_mask=mask).logits.numpy()
        ref_gen = model.generate(vision_x=xt, lang_x=torch.tensor(tokens), attention_mask=mask, max_new_tokens=STEPS,
                                 num_beams=1, do_sample=False, pad_token_id=PAD,
                                 eos_token_id=VOCAB + 50)[:, tokens.shape[1]:].numpy()

    out = str(tmp_path / "out")
    assert cli(["openflamingo", "--checkpoint", ckpt, "--lm", lm_dir, "--vision", vision, "--out", out]) == 0
    manifest = read_manifest(out)
    assert manifest["kind"] == "flamingo" and manifest["subtree"] is None
    assert any(k.startswith("vision:token_embedding") for k in manifest["ignored"])  # the text tower
    if lm_kind == "mpt":  # the tied head survives OpenFlamingo's filter under its alias name
        assert "checkpoint:lang_encoder.lm_head.weight" in manifest["ignored"]
    params, config = load_converted(out)
    if lm_kind == "mpt":
        assert any("truncated" in n for n in manifest["notes"])
    assert config.xattn.every == every and config.num_new_tokens == 3 and config.lm.vocab_size == VOCAB
    assert (config.image_token_id, config.eoc_token_id) == (MEDIA, EOC)

    image_mask = np.ones((2, 3), bool)
    forward = jax.jit(lambda p, t, x, m: build(config).apply({"params": p}, t, x, m))
    args = (jnp.asarray(tokens, jnp.int32), jnp.asarray(x), jnp.asarray(image_mask))
    logits = forward(params, *args)
    # The images matter: with the gates closed the logits move far more than the tolerance.
    assert float(np.max(np.abs(np.asarray(forward(zeros_gates(params), *args)) - ref_logits))) > 0.1
    diff = float(np.max(np.abs(np.asarray(logits) - ref_logits)))
    print(f"\n[parity] openflamingo {lm_kind} (L={layers}, every {every}): max |logits - OpenFlamingo| = {diff:.2e} "
          f"(logit scale {np.abs(ref_logits).max():.1f})")
    assert logits.shape == ref_logits.shape and diff < TOL

    gen = flamingo_greedy(config, params, tokens, x, image_mask, STEPS)
    np.testing.assert_array_equal(gen, ref_gen)
