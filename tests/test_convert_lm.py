"""Parity of converted HuggingFace decoder LMs: tiny random HF models built in-process, saved, converted,
saved as Orbax, loaded back; logits within 1e-4 (fp32) of HF's and cached greedy decoding identical to
HF's greedy generate(), on a batch with one left-padded row."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from flamingo_jax.convert import (
    ConversionError,
    UnusedWeightsError,
    convert_hf,
    load_converted,  # noqa: E402
    save_converted)
from flamingo_jax.convert.__main__ import main as cli  # noqa: E402
from flamingo_jax.convert.parity import lm_greedy  # noqa: E402
from flamingo_jax.models.lm import DecoderLM  # noqa: E402

pytestmark = pytest.mark.parity

VOCAB, LEN, PAD, STEPS = 96, 10, 3, 5
TOL = 1e-4


def randomize(model: "torch.nn.Module", seed: int = 0) -> None:
    """Weights of order 1 so logits are well separated (HF's 0.02 init makes greedy ties likely)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1 and ("norm" in name or "ln" in name):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            elif p.dim() == 1:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(
                    torch.randn(p.shape, generator=g) /
                    (p.shape[-1]**0.5 if "emb" not in name and "wte" not in name and "wpe" not in name else 1.0))


def build_hf(family: str):
    tf = transformers
    if family == "llama":
        return tf.LlamaForCausalLM(
            tf.LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, rope_theta=500.0))
    if family == "mistral":
        return tf.MistralForCausalLM(
            tf.MistralConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=1, max_position_embeddings=64,
                             sliding_window=64, tie_word_embeddings=True))
    if family == "gpt2":
        return tf.GPT2LMHeadModel(
            tf.GPT2Config(vocab_size=VOCAB, n_positions=64, n_embd=32, n_layer=2, n_head=4, resid_pdrop=0.0,
                          embd_pdrop=0.0, attn_pdrop=0.0))
    if family == "opt":
        return tf.OPTForCausalLM(
            tf.OPTConfig(vocab_size=VOCAB, hidden_size=32, ffn_dim=64, num_hidden_layers=2, num_attention_heads=4,
                         max_position_embeddings=64, word_embed_proj_dim=32, dropout=0.0, attention_dropout=0.0))
    if family == "mpt":
        return tf.MptForCausalLM(
            tf.MptConfig(vocab_size=VOCAB, d_model=32, n_layers=2, n_heads=4, expansion_ratio=2, max_seq_len=64))
    if family == "neox":
        return tf.GPTNeoXForCausalLM(
            tf.GPTNeoXConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                             num_attention_heads=4, rotary_pct=0.5, max_position_embeddings=64, hidden_dropout=0.0,
                             attention_dropout=0.0))
    if family == "neox_sequential":
        return tf.GPTNeoXForCausalLM(
            tf.GPTNeoXConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                             num_attention_heads=4, rotary_pct=1.0, use_parallel_residual=False,
                             max_position_embeddings=64, tie_word_embeddings=False))
    raise ValueError(family)


def inputs(seed: int = 0):
    g = np.random.default_rng(seed)
    tokens = g.integers(3, VOCAB, (2, LEN)).astype(np.int64)
    mask = np.ones((2, LEN), np.int64)
    tokens[1, :PAD], mask[1, :PAD] = 0, 0  # row 1 left-padded
    return tokens, mask


def hf_outputs(model, family: str, tokens: np.ndarray, mask: np.ndarray):
    model.eval()
    t, m = torch.tensor(tokens), torch.tensor(mask)
    kw = {}
    if family not in ("opt", "mpt"):  # OPT derives positions from the mask itself; MPT uses ALiBi
        kw["position_ids"] = (m.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        logits = model(input_ids=t, attention_mask=m, **kw).logits.float().numpy()
        gen = model.generate(input_ids=t, attention_mask=m, max_new_tokens=STEPS, do_sample=False, num_beams=1,
                             pad_token_id=0, eos_token_id=VOCAB + 7)
    return logits, gen[:, tokens.shape[1]:].numpy()


FAMILIES = ["llama", "mistral", "gpt2", "opt", "mpt", "neox", "neox_sequential"]


@pytest.mark.parametrize("family", FAMILIES)
def test_lm_parity(family, tmp_path):
    torch.manual_seed(0)
    model = build_hf(family)
    randomize(model)
    src = str(tmp_path / "hf")
    model.save_pretrained(src, safe_serialization=family != "gpt2")  # gpt2 goes through the .bin reader
    tokens, mask = inputs()
    ref_logits, ref_gen = hf_outputs(model, family, tokens, mask)

    result = convert_hf(src)
    out = save_converted(str(tmp_path / "out"), result)
    params, config = load_converted(out)
    assert json.load(open(os.path.join(out, "config.json")))["subtree"] == "lm"

    logits, _ = jax.jit(lambda p, t, m: DecoderLM(config).apply({"params": p}, t, m))(params,
                                                                                      jnp.asarray(tokens, jnp.int32),
                                                                                      jnp.asarray(mask, bool))
    real = mask.astype(bool)
    diff = float(np.max(np.abs(np.asarray(logits)[real] - ref_logits[real])))
    print(f"\n[parity] lm {family}: max |logits - HF| = {diff:.2e} (logit scale {np.abs(ref_logits).max():.1f})")
    assert diff < TOL

    gen = lm_greedy(config, params, tokens, STEPS, token_mask=mask.astype(bool))
    np.testing.assert_array_equal(gen, ref_gen)


def test_lm_scan_layers_and_cli(tmp_path):
    """CLI path, --scan-layers, bfloat16 storage, and restoring sharded onto a device."""
    torch.manual_seed(1)
    model = build_hf("llama")
    randomize(model, seed=1)
    src = str(tmp_path / "hf")
    model.save_pretrained(src)
    out = str(tmp_path / "out")
    assert cli(["hf", "--src", src, "--out", out, "--scan-layers"]) == 0
    assert cli(["hf", "--src", src, "--out", out]) == 2  # refuses to overwrite without --force
    params, config = load_converted(out, shardings=jax.sharding.SingleDeviceSharding(jax.devices()[0]))
    assert config.scan_layers and params["layers"]["attn"]["query"]["kernel"].shape == (2, 32, 4, 8)
    tokens, mask = inputs(1)
    ref_logits, _ = hf_outputs(model, "llama", tokens, mask)
    logits, _ = DecoderLM(config).apply({"params": params}, jnp.asarray(tokens, jnp.int32), jnp.asarray(mask, bool))
    real = mask.astype(bool)
    assert float(np.max(np.abs(np.asarray(logits)[real] - ref_logits[real]))) < TOL
    assert cli(["hf", "--src", src, "--out", str(tmp_path / "bf16"), "--dtype", "bfloat16"]) == 0
    p16, _ = load_converted(str(tmp_path / "bf16"))
    assert str(p16["embed"]["embedding"].dtype) == "bfloat16"


def test_unknown_and_unsupported_weights(tmp_path):
    from safetensors.numpy import load_file, save_file
    torch.manual_seed(2)
    model = build_hf("gpt2")
    src = str(tmp_path / "hf")
    model.save_pretrained(src)
    tensors = load_file(os.path.join(src, "model.safetensors"))
    tensors["transformer.h.0.attn.extra_proj.weight"] = np.zeros((2, 2), np.float32)
    tensors["mystery"] = np.zeros((1, ), np.float32)
    save_file(tensors, os.path.join(src, "model.safetensors"))
    with pytest.raises(UnusedWeightsError) as e:
        convert_hf(src)
    assert e.value.names == ["mystery", "transformer.h.0.attn.extra_proj.weight"]
    cfg = json.load(open(os.path.join(src, "config.json")))
    cfg["scale_attn_by_inverse_layer_idx"] = True
    json.dump(cfg, open(os.path.join(src, "config.json"), "w"))
    with pytest.raises(ConversionError, match="scale_attn_by_inverse_layer_idx"):
        convert_hf(src)


def test_sharded_bfloat16_safetensors(tmp_path):
    """Sharded safetensors with bfloat16 tensors (numpy has no bfloat16) read without torch's help."""
    import flax
    from flamingo_jax.convert import params_fingerprint, read_manifest
    torch.manual_seed(3)
    model = build_hf("neox")
    randomize(model, seed=3)
    model.to(torch.bfloat16).save_pretrained(str(tmp_path / "bf16"), max_shard_size="20KB")
    assert os.path.isfile(tmp_path / "bf16" / "model.safetensors.index.json")
    model.float().save_pretrained(str(tmp_path / "f32"))  # the same bf16-rounded values, widened
    a, b = convert_hf(str(tmp_path / "bf16")), convert_hf(str(tmp_path / "f32"))
    fa, fb = (flax.traverse_util.flatten_dict(r.params) for r in (a, b))
    assert fa.keys() == fb.keys() and all(np.array_equal(fa[k], fb[k]) for k in fa)
    out = save_converted(str(tmp_path / "out"), a)
    assert read_manifest(out)["params_sha256"] == params_fingerprint(load_converted(out)[0])
