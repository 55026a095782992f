"""Weights out (flamingo_jax.convert.outward) and the OpenFlamingo converter's refusals.

Round trips: a HuggingFace LM converted in and exported out is the same tensors and gives the same logits in
transformers; an OpenFlamingo checkpoint converted in and exported out is the same tensors, and OpenFlamingo
loading the export computes our logits. Refusals: a full state_dict whose frozen LM copies contradict --lm,
and a --num-new-tokens that contradicts the checkpoint's embedding rows, are errors naming the mismatch.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("einops")
pytest.importorskip("einops_exts")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from safetensors.numpy import load_file  # noqa: E402

from flamingo_jax.convert import convert_hf, load_converted  # noqa: E402
from flamingo_jax.convert.__main__ import main as cli  # noqa: E402
from flamingo_jax.convert.openflamingo import convert_openflamingo  # noqa: E402
from flamingo_jax.convert.outward import flamingo_to_openflamingo, lm_to_hf  # noqa: E402
from flamingo_jax.convert.weights import ConversionError  # noqa: E402
from flamingo_jax.models import build  # noqa: E402
from test_convert_lm import build_hf, randomize as randomize_lm  # noqa: E402
from test_convert_openflamingo import TOL, build_openflamingo, images, load_refs, randomize  # noqa: E402
from test_convert_openflamingo import tokens_with_images  # noqa: E402

pytestmark = pytest.mark.parity


@pytest.fixture(scope="module")
def refs():
    return load_refs()


@pytest.mark.parametrize("family", ["llama", "gpt2", "mpt"])
def test_hf_lm_round_trip(family, tmp_path):
    torch.manual_seed(0)
    model = build_hf(family)
    randomize_lm(model)
    src = str(tmp_path / "hf")
    model.save_pretrained(src)
    converted = convert_hf(src)
    out = lm_to_hf(converted.params, converted.config, src, str(tmp_path / "out"))

    original = {k: v.numpy() for k, v in model.state_dict().items()}
    exported = load_file(os.path.join(out, "model.safetensors"))
    assert exported  # every exported tensor is the original, bit for bit; what is left out is tied or a buffer
    for name, value in exported.items():
        np.testing.assert_array_equal(value, original[name], err_msg=name)
    left_out = set(original) - set(exported)
    assert all(n == "lm_head.weight" or "bias" in n and "attn" in n or "inv_freq" in n for n in left_out), left_out

    again = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    tokens = torch.tensor(np.random.default_rng(1).integers(0, 96, (2, 9)))
    with torch.no_grad():
        np.testing.assert_array_equal(again(tokens).logits.numpy(), model.eval()(tokens).logits.numpy())


def test_hf_lm_export_refuses_another_architecture(tmp_path):
    torch.manual_seed(0)
    build_hf("llama").save_pretrained(str(tmp_path / "llama"))
    build_hf("gpt2").save_pretrained(str(tmp_path / "gpt2"))
    config = build_hf("llama").config
    config.num_hidden_layers = 3
    transformers.LlamaForCausalLM(config).save_pretrained(str(tmp_path / "llama3"))
    converted = convert_hf(str(tmp_path / "llama"))
    with pytest.raises(ConversionError, match="no embed_tokens.weight .not a llama checkpoint"):
        lm_to_hf(converted.params, converted.config, str(tmp_path / "gpt2"), str(tmp_path / "out"))
    with pytest.raises(ConversionError, match="describes another LM: its num_layers is 3, the run's 2"):
        lm_to_hf(converted.params, converted.config, str(tmp_path / "llama3"), str(tmp_path / "out"))
    assert not os.path.exists(tmp_path / "out")  # nothing written


def test_openflamingo_round_trip_and_openflamingo_runs_the_export(refs, tmp_path):
    model, ckpt, lm_dir, vision = build_openflamingo(refs, tmp_path, "mpt", 4, 2)
    out = str(tmp_path / "conv")
    assert cli(["openflamingo", "--checkpoint", ckpt, "--lm", lm_dir, "--vision", vision, "--out", out]) == 0
    params, config = load_converted(out)
    path = flamingo_to_openflamingo(params, config, str(tmp_path / "export" / "checkpoint.pt"))

    saved = torch.load(ckpt, map_location="cpu", weights_only=True)
    exported = torch.load(path, map_location="cpu", weights_only=True)
    trainable = {
        k
        for k in saved
        if k.startswith("perceiver.") or "gated_cross_attn_layer." in k or k == "lang_encoder.transformer.wte.weight"
    }
    assert set(exported) == trainable
    for k in trainable:
        torch.testing.assert_close(exported[k], saved[k], rtol=0, atol=0, msg=k)

    # OpenFlamingo loads the export into a model whose trainable weights were scrambled, and runs ours.
    tokens = tokens_with_images()
    x, xt = images(2, 3, seed=11)
    mask = torch.ones(tokens.shape, dtype=torch.long)
    with torch.no_grad():
        before = model(vision_x=xt, lang_x=torch.tensor(tokens), attention_mask=mask).logits.numpy()
    randomize(model.perceiver, seed=21)
    randomize(model.lang_encoder.gated_cross_attn_layers, seed=22)
    missing, unexpected = model.load_state_dict(exported, strict=False)
    assert not unexpected
    with torch.no_grad():
        theirs = model(vision_x=xt, lang_x=torch.tensor(tokens), attention_mask=mask).logits.numpy()
    forward = jax.jit(lambda p, t, x, m: build(config).apply({"params": p}, t, x, m))
    ours = forward(params, jnp.asarray(tokens, jnp.int32), jnp.asarray(x), jnp.asarray(np.ones((2, 3), bool)))
    np.testing.assert_array_equal(theirs, before)
    assert float(np.max(np.abs(np.asarray(ours) - theirs))) < TOL


def test_frozen_copies_that_contradict_the_lm_are_an_error(refs, tmp_path):
    model, _, lm_dir, vision = build_openflamingo(refs, tmp_path, "llama", 2, 1)
    full = str(tmp_path / "full.pt")
    torch.save(model.state_dict(), full)  # the whole state_dict: frozen LM and vision copies included
    convert_openflamingo(full, lm_dir, vision)  # control: the LM it was trained with converts
    other = transformers.AutoModelForCausalLM.from_config(transformers.AutoConfig.from_pretrained(lm_dir))
    randomize_lm(other, seed=3)
    other.save_pretrained(str(tmp_path / "other_lm"))
    with pytest.raises(ConversionError) as e:
        convert_openflamingo(full, str(tmp_path / "other_lm"), vision)
    message = str(e.value)
    assert "frozen weight(s) saved in the checkpoint contradict the files given" in message
    assert "differs from --lm model.layers.0.self_attn.q_proj.weight" in message
    assert "pass the --lm / --vision the checkpoint was trained with" in message


def test_num_new_tokens_that_contradicts_the_checkpoint_is_an_error(refs, tmp_path):
    _, ckpt, lm_dir, vision = build_openflamingo(refs, tmp_path, "mpt", 4, 2)  # 3 added, LM table 8 rows larger
    with pytest.raises(ConversionError, match="--num-new-tokens 2 contradicts.*pass --num-new-tokens 3"):
        convert_openflamingo(ckpt, lm_dir, vision, num_new_tokens=2)
    assert convert_openflamingo(ckpt, lm_dir, vision, num_new_tokens=3).config.num_new_tokens == 3


def test_conversion_reads_shards_lazily_keeps_bfloat16_and_reports_progress(tmp_path, capsys):
    import ml_dtypes

    from flamingo_jax.convert.weights import LazyTensors, Weights, read_dir

    model = build_hf("llama").to(torch.bfloat16)
    model.save_pretrained(str(tmp_path / "hf"), max_shard_size="20KB")
    assert len([f for f in os.listdir(tmp_path / "hf") if f.endswith(".safetensors")]) > 2
    tensors = read_dir(str(tmp_path / "hf"))
    assert isinstance(tensors, LazyTensors)  # nothing read yet: each tensor is read from its shard when taken
    w = Weights(tensors, "hf", progress_every=0.0)
    names = w.names()
    for name in names:
        x = w.take(name)
        assert x.dtype == ml_dtypes.bfloat16  # never widened
        np.testing.assert_array_equal(x.astype(np.float32), model.state_dict()[name].float().numpy())
    lines = [x for x in capsys.readouterr().err.splitlines() if x.startswith("[convert]")]
    assert len(lines) == len(names) and all("tensors/s" in x for x in lines)
    assert lines[-1].endswith("ETA 0:00") and f"tensor {len(names)}/{len(names)} (100%)" in lines[-1]
