"""Activation sharding (flamingo_jax.sharding.ACTIVATION_RULES / constrain): the rules map each logical
activation axis to its mesh axis; the constraints are no-ops outside a mesh; a jitted forward on 8 simulated
devices (data=2, fsdp=2, model=2) carries them and gives one device's logits (a subprocess, since the device
count is fixed before JAX starts)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from flamingo_jax import sharding

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_rules_map_each_activation_axis_to_its_mesh_axis():
    spec = sharding.activation_spec
    assert spec(("act_batch", "act_length", "act_embed")) == P(("data", "fsdp"), None, None)  # residual stream
    assert spec(("act_batch", "act_length", "act_heads", None)) == P(("data", "fsdp"), None, "model", None)
    assert spec(("act_batch", "act_length", "act_kv_heads", None)) == P(("data", "fsdp"), None, "model", None)
    assert spec(("act_batch", "act_length", "act_mlp")) == P(("data", "fsdp"), None, "model")
    assert spec(("act_batch", "act_latents", "act_embed")) == P(("data", "fsdp"), None, None)
    # Every activation name has a rule, and none reuses a param name (whose layout differs: embed -> fsdp).
    names = {n for n, _ in sharding.ACTIVATION_RULES}
    assert names == {"act_batch", "act_length", "act_embed", "act_heads", "act_kv_heads", "act_mlp", "act_latents"}
    assert not names & {n for n, _ in sharding.RULES}


def test_constrain_is_a_no_op_outside_a_mesh():
    x = jnp.ones((2, 3, 4))
    assert sharding.constrain(x, ("act_batch", "act_length", "act_embed")) is x
    with sharding.activation_sharding(None):
        assert sharding.constrain(x, ("act_batch", "act_length", "act_embed")) is x


# Logits of the tiny gated model (scanned layers, gates open so the cross-attention counts) on one device and on
# the 8-device mesh; the mesh program's StableHLO must hold the activation constraints.
SCRIPT = textwrap.dedent("""
    import json, re, sys
    sys.path.insert(0, "tests")
    import jax, jax.numpy as jnp, numpy as np
    import tiny
    from flamingo_jax import sharding

    config = tiny.tiny_model_config("gated", scan=True)
    tokens = tiny.tokens_with_images(config, batch=4)
    imgs, mask = tiny.images(batch=4), jnp.ones((4, 3), bool)
    model, params, boxed = tiny.init_params(config, tokens, imgs, mask)
    params = tiny.set_gates(params, 0.5)
    fwd = lambda p, t, i, m: model.apply({"params": p}, t, i, m)
    one = jax.jit(fwd)
    ref = np.asarray(one(params, tokens, imgs, mask))
    plain_text = one.lower(params, tokens, imgs, mask).as_text()

    mesh = sharding.make_mesh(dict(data=2, fsdp=2, model=2))
    p_sh = sharding.tree_shardings(boxed["params"], mesh)
    placed = jax.device_put(params, p_sh)
    args = [jax.device_put(x, sharding.batch_sharding(mesh, x.ndim)) for x in (tokens, imgs, mask)]
    on_mesh = jax.jit(sharding.with_activation_sharding(fwd, mesh))
    text = on_mesh.lower(placed, *args).as_text()
    out = on_mesh(placed, *args)
    count = lambda s: len(re.findall(r"sdy.sharding_constraint|@Sharding", s))
    print(json.dumps(dict(max_diff=float(np.max(np.abs(np.asarray(out) - ref))), ref_scale=float(np.max(np.abs(ref))),
                          mesh_constraints=count(text), plain_constraints=count(plain_text),
                          model_split="'model'" in text or '"model"' in text, devices=len(out.sharding.device_set))))
""")


def test_mesh_forward_matches_one_device():
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), JAX_PLATFORMS="cpu")
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
    r = subprocess.run([sys.executable, "-c", SCRIPT], env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads([line for line in r.stdout.splitlines() if line.startswith("{")][-1])
    assert res["devices"] == 8
    # Constrained: embeddings, every block's residual, q/k/v, attention outputs, FFW hidden, cross-attention,
    # vision features and latents; none without a mesh.
    assert res["plain_constraints"] == 0 and res["mesh_constraints"] >= 20 and res["model_split"]
    assert res["ref_scale"] > 0.1 and res["max_diff"] < 1e-4 * max(1.0, res["ref_scale"])
