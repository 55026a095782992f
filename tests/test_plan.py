"""flamingo_jax.tools.plan: the ahead-of-time memory plan on 8 forced CPU devices (subprocesses, since the
device count must be fixed before JAX starts)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The tiny experiment with one dataset and scanned layers: one forward/backward in the step, a fast compile.
CONFIG = textwrap.dedent("""
    import ml_collections
    from flamingo_jax import configs
    from flamingo_jax.data.config import tiny_data_config

    def get_config(arg=None):
        config = ml_collections.ConfigDict()
        config.model = configs.tiny_model_config(vocab_size=512)
        config.model.lm.scan_layers = True
        config.seed = 0
        data = tiny_data_config()
        data.mixture = ["m3w"]
        config.model.vision.image_size = data.image_size
        configs.add_training(config, data, total_steps=20, log_every=5, warmup_steps=10)
        return configs.finalize(config)
""")

# Plans the config on (data 1, fsdp 2, model 4) and recomputes the per-device param bytes from the shapes and
# logical names alone, with the layout the docs promise written out here (not flamingo_jax.sharding's code):
# embed over fsdp (2), mlp / heads / kv_heads / vocab over model (4), the rest replicated; a mesh axis that does
# not divide its dimension, or that an earlier dimension of the same array took, replicates that dimension.
SCRIPT = textwrap.dedent("""
    import json, math, sys
    import flax.linen as nn, jax, jax.numpy as jnp
    from flamingo_jax import models
    from flamingo_jax.tools import plan as P

    LAYOUT = {"embed": ("fsdp", 2), "mlp": ("model", 4), "heads": ("model", 4), "kv_heads": ("model", 4),
              "vocab": ("model", 4)}

    def shard_shape(names, shape):
        used, out = set(), []
        for name, dim in zip(names, shape):
            axis, n = LAYOUT.get(name, (None, 1))
            if axis is None or axis in used or dim % n:
                n = 1
            else:
                used.add(axis)
            out.append(dim // n)
        return out

    from flamingo_jax.config_files import load_config
    config = load_config(sys.argv[1])
    mesh_sizes = dict(data=1, fsdp=2, model=4)
    out = P.plan(config, mesh_sizes, P.parse_target("cpu"))

    s = config.model.vision.image_size
    dummy = (jnp.zeros((1, 2), jnp.int32), jnp.zeros((1, 1, 1, s, s, 3)), jnp.ones((1, 1), bool))
    boxed = jax.eval_shape(lambda r: models.build(config.model).init(r, *dummy), jax.random.key(0))["params"]
    expected = unsharded = 0
    for box in jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, nn.meta.AxisMetadata)):
        value = box.unbox()
        expected += math.prod(shard_shape(box.names, value.shape)) * value.dtype.itemsize
        unsharded += math.prod(value.shape) * value.dtype.itemsize
    print(json.dumps(dict(plan=out, expected_params_bytes=expected, unsharded_params_bytes=unsharded)))
""")


def _env() -> dict:
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)
    return env


def _last_json(stdout: str) -> dict:
    return json.loads([line for line in stdout.splitlines() if line.startswith("{")][-1])


@pytest.fixture(scope="module")
def config_file(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("plan") / "tiny_one.py"
    path.write_text(CONFIG)
    return str(path)


def _run_on_8_devices(script: str, config_file: str) -> dict:
    """The last JSON line a script prints, run on 8 forced CPU devices with the config file as its argument."""
    env = dict(_env(), XLA_FLAGS="--xla_force_host_platform_device_count=8")
    r = subprocess.run([sys.executable, "-c", script, config_file], env=env, cwd=ROOT, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return _last_json(r.stdout)


def test_cpu_plan_param_bytes_match_shapes(config_file):
    res = _run_on_8_devices(SCRIPT, config_file)
    out = res["plan"]
    assert out["devices"] == 8 and out["platform"] == "cpu" and out["mesh"] == dict(data=1, fsdp=2, model=4)
    assert out["params_bytes"] == res["expected_params_bytes"]
    assert out["params_bytes"] < res["unsharded_params_bytes"]  # something is sharded over fsdp / model
    assert out["params_bytes"] == out["trainable_params_bytes"] + out["frozen_params_bytes"]
    # Adam: two moments per trainable param (plus scalar counts), sharded like the params.
    assert 2 * out["trainable_params_bytes"] <= out["optimizer_state_bytes"] < 2 * out["trainable_params_bytes"] + 64
    # The compiled step's arguments are exactly the state, the frozen params and the batch (+ a few scalars).
    state = out["params_bytes"] + out["optimizer_state_bytes"] + out["batch_bytes"]
    assert 0 <= out["argument_bytes"] - state < 64
    assert out["peak_bytes"] >= out["argument_bytes"] and out["temp_bytes"] > 0
    assert out["verdict"] == "fits" and out["usable_bytes"] == int(out["memory_bytes"] * 0.9)


def test_cli_over_budget_does_not_fit(config_file):
    # No XLA_FLAGS: the tool sets up its 8 forced devices itself.
    r = subprocess.run([
        sys.executable, "-m", "flamingo_jax.tools.plan", f"--config={config_file}", "--mesh=data=2,fsdp=1,model=4",
        "--target=cpu", "--memory_gb=0.0001"
    ], env=_env(), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    out = _last_json(r.stdout)
    assert out["devices"] == 8 and out["verdict"] == "does not fit"
    assert out["peak_bytes"] > out["usable_bytes"] == int(0.0001 * 1024**3 * 0.9)


def test_bad_target_is_one_line_error(config_file):
    r = subprocess.run(
        [sys.executable, "-m", "flamingo_jax.tools.plan", f"--config={config_file}", "--target=tpu:v9:2x2"], env=_env(),
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode != 0
    assert "unknown --target 'tpu:v9:2x2'" in r.stderr.strip().splitlines()[-1]


# Generation from prompts of two lengths on (data 2, fsdp 2, model 2): the KV cache's bytes as the config predicts.
GENERATE = textwrap.dedent("""
    import json, sys
    import jax.numpy as jnp
    from flamingo_jax.models.lm import head_dim
    from flamingo_jax.tools import plan as P

    from flamingo_jax.config_files import load_config
    config = load_config(sys.argv[1])
    mesh = dict(data=2, fsdp=2, model=2)
    runs = [P.plan_generate(config, mesh, P.parse_target("cpu"), prompt_len=n, new_tokens=8, num_images=5)
            for n in (32, 96)]
    state_only = P.plan_generate(config, mesh, P.parse_target("cpu"), prompt_len=32, new_tokens=8, num_images=5,
                                 compile=False)
    tight = P.plan_generate(config, mesh, P.parse_target("cpu"), prompt_len=32, new_tokens=8, num_images=5,
                            compile=False, memory_bytes=runs[0]["state_bytes"])
    lm = config.model.lm
    per_slot = (2 * lm.num_layers * ((lm.num_kv_heads or lm.num_heads) // 2) * head_dim(lm)
                * jnp.dtype(config.model.dtype).itemsize + 1)  # k and v of every layer + key_mask, per row
    print(json.dumps(dict(runs=runs, per_slot=per_slot, state_only=state_only, tight=tight)))
""")


def test_generate_plan_holds_the_kv_cache(config_file):
    res = _run_on_8_devices(GENERATE, config_file)
    short, long = res["runs"]
    assert short["mode"] == "generate" and short["global_batch"] == 4 and short["cache_len"] == 40
    assert long["cache_len"] == 104 and long["params_bytes"] == short["params_bytes"]
    # 64 more slots: the cache grows by rows/device x slots x per-slot bytes (kv heads split over model) ...
    growth = (4 // 4) * 64 * res["per_slot"]
    assert long["kv_cache_bytes"] - short["kv_cache_bytes"] == growth
    # ... and so do the compiled programs: the step takes the cache as an argument (donated, returned), the
    # prefill returns it, and the peak holds it.
    assert long["step"]["argument_bytes"] - short["step"]["argument_bytes"] == growth
    assert long["step"]["alias_bytes"] - short["step"]["alias_bytes"] == growth
    assert long["prefill"]["output_bytes"] - short["prefill"]["output_bytes"] == growth
    assert long["peak_bytes"] - short["peak_bytes"] >= growth
    assert short["step"]["argument_bytes"] >= short["kv_cache_bytes"] and short["verdict"] == "fits"
    # --nocompile: the same state from shapes, no peak; a verdict only when the state alone is over the budget.
    only, tight = res["state_only"], res["tight"]
    assert only["kv_cache_bytes"] == short["kv_cache_bytes"] and only["peak_bytes"] is None
    assert only["state_bytes"] == short["params_bytes"] + short["kv_cache_bytes"]
    assert only["verdict"].startswith("undecided") and tight["verdict"] == "does not fit"
