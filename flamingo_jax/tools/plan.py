"""Ahead-of-time memory plan of the sharded train step, or of generation, for a target machine; nothing is
allocated.

  python -m flamingo_jax.tools.plan --config experiments/flamingo_80b.py --mesh data=8,fsdp=4,model=8 \
      --target {cpu,tpu:v5e:16x16,tpu:v5p:4x8x8,gpu:h100:32x8,...} [--batch m3w=64,align=128] \
      [--memory_gb 16] [--headroom 0.1] [--config.a.b=value ...]
  python -m flamingo_jax.tools.plan --mode generate --config ... --mesh ... --target ... \
      [--gen_batch N] [--prompt_len L] [--images 33] [--new_tokens 20]

--mode generate plans greedy generation from a 32-shot prompt (plan_generate): the prefill of the prompt
(images encoded, KV cache filled) and one decoding step, params only (no optimizer state), and reports the
KV cache's per-device bytes beside the programs' peaks.

Builds the step exactly as the trainer does (flamingo_jax.train.Trainer.create), from the same state layout
(flamingo_jax.train_state.state_layout), abstract: params and optimizer state come from jax.eval_shape with the
trainer's shardings, every input is a ShapeDtypeStruct carrying its
NamedSharding, and jax.jit(step).lower(...).compile() compiles for the target's devices. Prints one JSON
object with per-device bytes: params (trainable, frozen), optimizer state, batch, temporaries and the peak,
and a verdict against the target's per-device memory less `headroom` (default 10%).

Targets:
  cpu                 forced host devices, one per mesh position (--xla_force_host_platform_device_count;
                      the tool re-executes itself with the flag when JAX already started with fewer).
                      State sizes are exact; XLA:CPU's temporaries overstate an accelerator's (1.6-2.1x).
                      Per-device memory: --memory_gb, else host RAM / devices.
  tpu:<gen>:<AxB[xC]> compile-only TPU devices from the libtpu wheel (optional: `pip install libtpu`),
                      gen in v4, v5e, v5p, v6e; e.g. tpu:v5e:16x16 (256 chips, 16 GiB each).
  gpu:<kind>:<HxD>    a deviceless compile through the CUDA PJRT plugin (optional: `pip install
                      "jax[cuda12]"`): H hosts x D GPUs, kind in h100, h200, a100, b200. The plugin needs
                      the GPU's target description: --gpu_target_config FILE (an XLA GpuTargetConfigProto
                      text file, e.g. XLA's gpu_specs/h100_sxm.txtpb).

The batch is the config's mixture at its global batch sizes, every dataset in one step (the paper's
accumulation), with config.microbatches applied; --batch overrides sizes and --datasets keeps only some
datasets (a round-robin step, or a quicker compile).
The model should scan over layers (lm.scan_layers=True, the paper configs' default) so the compile time does
not grow with depth.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import time
from typing import Any, Mapping, Sequence

from flamingo_jax.tools.targets import (GIB, PlanError, Target, parse_batch, parse_mesh, parse_target, target_devices,
                                        target_name)

# ------------------------------------------------------------------------------------- abstract state


def _bytes(x: Any) -> int:
    return int(math.prod(x.shape)) * x.dtype.itemsize if hasattr(x, "dtype") else 0


def per_device_bytes(tree: Any, shardings: Any) -> int:
    """Bytes one device holds of `tree` (ShapeDtypeStructs) under `shardings` (the largest shard)."""
    import jax

    total = 0
    for x, s in zip(jax.tree.leaves(tree), jax.tree.leaves(shardings)):
        shard = s.shard_shape(x.shape)
        total += int(math.prod(shard)) * x.dtype.itemsize
    return total


def batch_shapes(config: Any, batch_overrides: Mapping[str, int], datasets: Sequence[str] = ()) -> dict:
    """{dataset: {field: (shape, dtype)}} of one step's global batches (flamingo_jax.train_step layout):
    every dataset of the mixture, or only `datasets` (a round-robin step)."""
    import numpy as np

    names = list(datasets or config.data.mixture)
    unknown = (set(batch_overrides) | set(names)) - set(config.data.mixture)
    if unknown:
        raise PlanError(f"dataset names {sorted(unknown)} are not in the mixture {list(config.data.mixture)}")
    out = {}
    s = config.model.vision.image_size
    for name in names:
        d = config.data.datasets[name]
        b = int(batch_overrides.get(name, d.batch_size))
        t, l = max(int(d.max_images), 1), int(d.seq_len)
        out[name] = dict(tokens=((b, l), np.int32), images=((b, t, int(d.frames), s, s, 3), np.float32),
                         image_mask=((b, t), np.bool_), media_index=((b, l), np.int32), targets=((b, l), np.int32),
                         loss_mask=((b, l), np.float32))
    return out


# ----------------------------------------------------------------------------------------------- plan


def plan(config: Any, mesh_sizes: Mapping[str, int], target: Target, *, devices: Sequence[Any] | None = None,
         batch_overrides: Mapping[str, int] | None = None, datasets: Sequence[str] = (),
         memory_bytes: int | None = None, headroom: float = 0.1, gpu_target_config: str = "",
         compile: bool = True) -> dict:
    """Compiles the train step of `config` for `target` on `mesh_sizes` and returns the memory plan
    (compile=False: the state's per-device bytes from shapes only, see `_finish`)."""
    import jax

    from flamingo_jax import models, sharding
    from flamingo_jax.train_state import state_layout, with_shardings
    from flamingo_jax.train_step import make_train_step

    t_start = time.perf_counter()
    count = math.prod(mesh_sizes[a] for a in sharding.MESH_AXES)
    if devices is None:
        devices = target_devices(target, count, gpu_target_config)
    mesh = sharding.make_mesh(dict(mesh_sizes), list(devices)[:count])
    batches = batch_shapes(config, batch_overrides or {}, datasets)
    for name, fields in batches.items():
        sharding.batch_size_divides(fields["tokens"][0][0], mesh, name)

    model = models.build(config.model)
    layout = state_layout(config, model, mesh)  # the trainer's state and shardings (flamingo_jax.train_state)
    state, state_sh, frozen, frozen_sh = layout.state, layout.state_shardings, layout.frozen, layout.frozen_shardings
    rep = sharding.replicated(mesh)

    batch_args = {
        name: {
            k: jax.ShapeDtypeStruct(shape, dtype, sharding=sharding.batch_sharding(mesh, len(shape)))
            for k, (shape, dtype) in f.items()
        }
        for name, f in batches.items()
    }
    weights = {n: config.data.datasets[n].weight for n in config.data.mixture}
    micro = {n: config.microbatches.get(n, 1) for n in config.data.mixture}
    step = sharding.with_activation_sharding(
        make_train_step(model, layout.tx, layout.schedule, weights, micro, config.loss.normalization), mesh)
    jitted = jax.jit(step, in_shardings=(state_sh, frozen_sh, None), out_shardings=(state_sh, rep), donate_argnums=0)
    t0 = time.perf_counter()
    compiled, error, compile_s = None, "not compiled (--nocompile)", 0.0
    if compile:
        lowered = jitted.lower(with_shardings(state, state_sh), with_shardings(frozen, frozen_sh), batch_args)
    lower_s = time.perf_counter() - t0
    if compile:
        compiled, error, compile_s = _compile(lowered, target)

    trainable_b = per_device_bytes(state["trainable"], state_sh["trainable"])
    frozen_b = per_device_bytes(frozen, frozen_sh)
    opt_b = per_device_bytes(state["opt_state"], state_sh["opt_state"])
    batch_b = per_device_bytes(batch_args, jax.tree.map(lambda x: x.sharding, batch_args))
    out = dict(
        mode="train",
        target=target_name(target),
        mesh=dict(mesh_sizes),
        devices=count,
        platform=devices[0].platform,
        device_kind=getattr(devices[0], "device_kind", ""),
        global_batch={n: f["tokens"][0][0]
                      for n, f in batches.items()},
        params_bytes=trainable_b + frozen_b,
        trainable_params_bytes=trainable_b,
        frozen_params_bytes=frozen_b,
        optimizer_state_bytes=opt_b,
        batch_bytes=batch_b,
        state_bytes=trainable_b + frozen_b + opt_b + batch_b,
    )
    out.update(_memory(compiled, error))
    return _finish(out, target, count, memory_bytes, headroom, lower_s, compile_s, t_start)


def cache_shardings(cache: Any, batch_axes: Any, mesh: Any) -> Any:
    """Shardings of a decoding cache: each leaf's batch axis (`batch_axes`, None for none) over (data, fsdp)
    and, on [..., S, G, Dh] key/value leaves, the key/value heads G over `model`, as their projections are
    split (the attention layers' act_kv_heads constraint); axes that do not divide stay replicated."""
    import jax
    from jax.sharding import NamedSharding, PartitionSpec as P

    from flamingo_jax import sharding

    def one(x, a):
        spec = [None] * x.ndim
        if a is not None and x.shape[a] % (mesh.shape["data"] * mesh.shape["fsdp"]) == 0:
            spec[a] = sharding.BATCH_AXES
        if a is not None and x.ndim >= a + 4 and x.shape[-2] % mesh.shape["model"] == 0:
            spec[-2] = "model"
        return NamedSharding(mesh, P(*spec))

    return jax.tree.map(one, cache, batch_axes)


def plan_generate(config: Any, mesh_sizes: Mapping[str, int], target: Target, *, devices: Sequence[Any] | None = None,
                  batch: int | None = None, prompt_len: int | None = None, num_images: int = 33, new_tokens: int = 20,
                  memory_bytes: int | None = None, headroom: float = 0.1, gpu_target_config: str = "",
                  compile: bool = True) -> dict:
    """Compiles greedy generation from a few-shot prompt for `target` and returns its memory plan.

    Two programs, as evaluation runs them (flamingo_jax.evaluation.decoding): the prefill (encode the
    prompt's `num_images` images, make the KV cache of prompt_len + new_tokens slots, run the prompt through
    it) and one decoding step (one token per row attending to the cache, the cache donated and returned).
    Params are all frozen at evaluation: no optimizer state. The batch (default: data * fsdp, one prompt per
    data-parallel group) is split over (data, fsdp); the cache as `cache_shardings`. The peak is the larger
    of the two programs' peaks. Defaults: the paper's 32-shot prompts (Section 3, Table 1: up to 32 shots;
    33 images with the query) in the LM's context, prompt_len = lm.max_len - new_tokens."""
    import jax
    import jax.numpy as jnp

    from flamingo_jax import models, sharding
    from flamingo_jax.evaluation.decoding import _batch_axes
    from flamingo_jax.train_state import abstract_params

    t_start = time.perf_counter()
    count = math.prod(mesh_sizes[a] for a in sharding.MESH_AXES)
    if devices is None:
        devices = target_devices(target, count, gpu_target_config)
    mesh = sharding.make_mesh(dict(mesh_sizes), list(devices)[:count])
    c = config.model
    b = int(batch or mesh.shape["data"] * mesh.shape["fsdp"])
    sharding.batch_size_divides(b, mesh, "generate")
    length = int(prompt_len or c.lm.max_len - new_tokens)
    slots = length + int(new_tokens)
    model = models.build(c)
    params, param_sh = abstract_params(model, c, mesh)
    axes = _batch_axes(model, params, slots)
    cache = jax.eval_shape(lambda p: model.apply({"params": p}, b, slots, method="init_cache"), params)
    cache_sh = cache_shardings(cache, axes, mesh)
    s = c.vision.image_size
    bs = lambda n: sharding.batch_sharding(mesh, n)  # noqa: E731
    sds = jax.ShapeDtypeStruct
    images = sds((b, num_images, 1, s, s, 3), jnp.float32, sharding=bs(6))
    image_mask = sds((b, num_images), jnp.bool_, sharding=bs(2))
    tokens = sds((b, length), jnp.int32, sharding=bs(2))

    def prefill(p, tok, imgs, mask):
        visual = model.apply({"params": p}, imgs, method="encode")
        empty = jax.lax.with_sharding_constraint(model.apply({"params": p}, b, slots, method="init_cache"), cache_sh)
        logits, new = model.apply({"params": p}, tok, visual, mask, None, jnp.ones(tok.shape, bool), empty,
                                  method="decode")
        return jax.nn.log_softmax(logits[:, -1]), visual, new

    def step(p, tok, visual, cache_):
        # After the prompt a token sees only the last image (the 'previous' mask): image 1 of a 1-image input.
        one = jnp.ones((b, 1), bool)
        logits, new = model.apply({"params": p}, tok, visual, one, one.astype(jnp.int32), one, cache_, method="decode")
        return jax.nn.log_softmax(logits[:, -1]), new

    k, d = jax.eval_shape(lambda p, x: model.apply({"params": p}, x, method="encode"), params,
                          sds((1, 1, 1, s, s, 3), jnp.float32)).shape[-2:]
    p_args = jax.tree.map(lambda x, sh: sds(x.shape, x.dtype, sharding=sh), params, param_sh)
    c_args = jax.tree.map(lambda x, sh: sds(x.shape, x.dtype, sharding=sh), cache, cache_sh)
    t0 = time.perf_counter()
    lowered = [] if not compile else [
        jax.jit(sharding.with_activation_sharding(prefill, mesh), out_shardings=(bs(2), bs(4), cache_sh)).lower(
            p_args, tokens, images, image_mask),
        jax.jit(sharding.with_activation_sharding(step, mesh), out_shardings=(bs(2), cache_sh), donate_argnums=3).lower(
            p_args, sds((b, 1), jnp.int32, sharding=bs(2)), sds(
                (b, 1, k, d), jnp.dtype(c.dtype), sharding=bs(4)), c_args),
    ]
    lower_s = time.perf_counter() - t0
    out = dict(mode="generate", target=target_name(target), mesh=dict(mesh_sizes), devices=count,
               platform=devices[0].platform, device_kind=getattr(devices[0], "device_kind", ""), global_batch=b,
               prompt_len=length, images=num_images, new_tokens=int(new_tokens), cache_len=slots,
               params_bytes=per_device_bytes(params, param_sh), kv_cache_bytes=per_device_bytes(cache, cache_sh),
               kv_cache_total_bytes=sum(_bytes(x) for x in jax.tree.leaves(cache)))
    out["state_bytes"] = out["params_bytes"] + out["kv_cache_bytes"]
    if not compile:
        out.update(peak_bytes=None, compile_error="not compiled (--nocompile)")
        return _finish(out, target, count, memory_bytes, headroom, lower_s, 0.0, t_start)
    compile_s = 0.0
    for name, low in zip(("prefill", "step"), lowered):
        compiled, error, seconds = _compile(low, target)
        compile_s += seconds
        out[name] = _memory(compiled, error)
    peaks = [out[n]["peak_bytes"] for n in ("prefill", "step")]
    out["peak_bytes"] = None if None in peaks else max(peaks)
    if out["peak_bytes"] is None:
        out["compile_error"] = next(out[n]["compile_error"] for n in ("prefill", "step")
                                    if out[n]["peak_bytes"] is None)
    return _finish(out, target, count, memory_bytes, headroom, lower_s, compile_s, t_start)


def _compile(lowered: Any, target: Target) -> tuple[Any, str | None, float]:
    """(compiled or None, the one-line RESOURCE_EXHAUSTED error or None, seconds)."""
    t0 = time.perf_counter()
    # The plan never runs the program: on CPU skip LLVM's optimisations (half the compile time; buffer
    # assignment, hence every figure below, is unchanged).
    options = {"xla_backend_optimization_level": 0} if target.kind == "cpu" else None
    try:
        compiled = lowered.compile(compiler_options=options)
    except Exception as e:  # over-budget TPU compiles fail with RESOURCE_EXHAUSTED
        if "RESOURCE_EXHAUSTED" not in str(e):
            raise
        compiled, error = None, str(e).splitlines()[0][:300]
    else:
        error = None
    return compiled, error, time.perf_counter() - t0


def _memory(compiled: Any, error: str | None) -> dict:
    """The compiled program's per-device memory analysis and its peak (None when it did not compile)."""
    if compiled is None:
        return dict(peak_bytes=None, compile_error=error)
    m = compiled.memory_analysis()
    arg, outp, alias, temp = (int(m.argument_size_in_bytes), int(m.output_size_in_bytes), int(m.alias_size_in_bytes),
                              int(m.temp_size_in_bytes))
    # Live at once: the arguments, the outputs not aliased to (donated) arguments, the temporaries.
    # XLA's own peak figure is reported beside it (on CPU it leaves out most temporaries).
    xla_peak = int(getattr(m, "peak_memory_in_bytes", 0) or 0)
    return dict(argument_bytes=arg, output_bytes=outp, alias_bytes=alias, temp_bytes=temp,
                generated_code_bytes=int(m.generated_code_size_in_bytes), xla_peak_bytes=xla_peak,
                peak_bytes=max(arg + outp - alias + temp, xla_peak))


def _finish(out: dict, target: Target, count: int, memory_bytes: int | None, headroom: float, lower_s: float,
            compile_s: float, t_start: float) -> dict:
    """out with the budget, the verdict against it less `headroom`, and the timings."""
    budget = memory_bytes or target.memory_bytes
    if budget is None:  # cpu without --memory_gb: the host's RAM shared by the forced devices
        budget = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // count
    usable = int(budget * (1.0 - headroom))
    peak = out["peak_bytes"]
    if peak is not None:
        verdict = "fits" if peak <= usable else "does not fit"
    elif out.get("compile_error", "").startswith("not compiled"):
        # Without the compile only the state (params, optimizer state or KV cache, batch) is known: a lower
        # bound of the peak, which decides only when it alone is over the budget.
        verdict = "does not fit" if out["state_bytes"] > usable else "undecided (state fits; compile for the peak)"
    else:
        verdict = "does not fit"  # RESOURCE_EXHAUSTED
    out.update(
        memory_bytes=int(budget),
        usable_bytes=usable,
        headroom=headroom,
        peak_gib=None if peak is None else round(peak / GIB, 3),
        memory_gib=round(budget / GIB, 3),
        state_gib=round(out["state_bytes"] / GIB, 3),
        verdict=verdict,
        lower_s=round(lower_s, 2),
        compile_s=round(compile_s, 2),
        total_s=round(time.perf_counter() - t_start, 2),
    )
    if target.kind == "cpu":
        out["note"] = "forced CPU devices: state sizes exact, XLA:CPU temporaries overstate accelerators'"
    return out


# ------------------------------------------------------------------------------------------------ CLI


def _flag_value(argv: Sequence[str], name: str) -> str | None:
    for i, a in enumerate(argv):
        if a == f"--{name}" and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith(f"--{name}="):
            return a.split("=", 1)[1]
    return None


def _prepare_process(argv: Sequence[str]) -> None:
    """Before JAX starts: enough forced CPU devices for a cpu plan (re-executing this command with
    XLA_FLAGS when JAX already started with fewer), and JAX_PLATFORMS=cpu for compile-only targets."""
    target_text, mesh_text = _flag_value(argv, "target") or "cpu", _flag_value(argv, "mesh")
    try:
        target = parse_target(target_text)
        count = math.prod(parse_mesh(mesh_text).values()) if mesh_text else 1
    except PlanError:
        return  # reported properly by main
    if target.kind != "cpu":
        os.environ.setdefault("JAX_PLATFORMS", "cpu")  # no local accelerator needed to compile for one
        if target.kind == "gpu" and "xla_gpu_enable_triton_gemm" not in os.environ.get("XLA_FLAGS", ""):
            # A deviceless compile cannot autotune Triton GEMM tiles (some dots then fail to compile):
            # plan with cuBLAS GEMMs, which leaves the buffers to plan unchanged but for cuBLAS workspace.
            os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_gpu_enable_triton_gemm=false").strip()
        os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")  # no GCE metadata server to ask
        os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")  # one (compile-only) host
        # Compile-only: no TPU is opened, so another process of this environment holding libtpu's lockfile
        # (any JAX program started once libtpu is installed) must not stop the plan.
        os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
        return
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    import jax
    from jax._src import xla_bridge

    if not xla_bridge.backends_are_initialized():
        jax.config.update("jax_num_cpu_devices", max(count, 1))
        return
    if len(jax.devices("cpu")) >= count or os.environ.get("_FJ_PLAN_REEXEC"):
        return
    flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "", os.environ.get("XLA_FLAGS", ""))
    env = dict(os.environ, XLA_FLAGS=f"{flags} --xla_force_host_platform_device_count={count}".strip(),
               _FJ_PLAN_REEXEC="1", JAX_PLATFORMS="cpu")
    raise SystemExit(subprocess.run([sys.executable, "-m", "flamingo_jax.tools.plan", *argv[1:]], env=env).returncode)


def _define_flags() -> dict:
    """The command-line flags (defined only when run as a program, so importing this module is free)."""
    from absl import flags
    from ml_collections import config_flags

    return dict(
        config=config_flags.DEFINE_config_file("config", None, "experiment config file[:arg]", lock_config=True),
        mesh=flags.DEFINE_string("mesh", "data=1,fsdp=1,model=1", "mesh axis sizes: data=N,fsdp=N,model=N"),
        target=flags.DEFINE_string("target", "cpu", "cpu | tpu:<gen>:<grid> | gpu:<kind>:<hosts>x<gpus>"),
        batch=flags.DEFINE_string("batch", "", "global batch overrides: dataset=N,..."),
        datasets=flags.DEFINE_string("datasets", "", "only these datasets in the step (default: the mixture)"),
        memory_gb=flags.DEFINE_float("memory_gb", 0.0, "per-device memory in GiB (default: the target's)"),
        headroom=flags.DEFINE_float("headroom", 0.1, "fraction of device memory kept free"),
        gpu_target_config=flags.DEFINE_string("gpu_target_config", "", "GpuTargetConfigProto text file"),
        compile=flags.DEFINE_bool("compile", True, "compile for the peak (--nocompile: state bytes only, "
                                  "from shapes, in seconds)"),
        mode=flags.DEFINE_enum("mode", "train", ["train", "generate"], "plan the train step or generation"),
        gen_batch=flags.DEFINE_integer("gen_batch", 0, "generate: global batch of prompts (default data*fsdp)"),
        prompt_len=flags.DEFINE_integer("prompt_len", 0, "generate: prompt tokens (default lm.max_len - "
                                        "new_tokens)"),
        images=flags.DEFINE_integer("images", 33, "generate: images per prompt (32 shots + the query)"),
        new_tokens=flags.DEFINE_integer("new_tokens", 20, "generate: tokens generated (KV cache slots after "
                                        "the prompt)"),
    )


def main(argv: Sequence[str], f: dict) -> None:
    from flamingo_jax import sharding

    if len(argv) > 1:
        raise SystemExit(f"error: unexpected arguments {list(argv[1:])}")
    try:
        if f["config"].value is None:
            raise PlanError("--config is required (e.g. experiments/flamingo_80b.py)")
        memory = int(f["memory_gb"].value * GIB) if f["memory_gb"].value else None
        if memory is None and f["gpu_target_config"].value:  # the GPU's own size, e.g. 79.1 GiB of an H100
            with open(f["gpu_target_config"].value) as spec:
                found = re.search(r"device_memory_size:\s*(\d+)", spec.read())
            memory = int(found.group(1)) if found else None
        common = dict(memory_bytes=memory, compile=f["compile"].value, headroom=f["headroom"].value,
                      gpu_target_config=f["gpu_target_config"].value)
        args = (f["config"].value, parse_mesh(f["mesh"].value), parse_target(f["target"].value))
        if f["mode"].value == "generate":
            out = plan_generate(*args, batch=f["gen_batch"].value or None, prompt_len=f["prompt_len"].value or None,
                                num_images=f["images"].value, new_tokens=f["new_tokens"].value, **common)
        else:
            out = plan(*args, batch_overrides=parse_batch(f["batch"].value),
                       datasets=[d for d in f["datasets"].value.split(",") if d], **common)
    except (PlanError, sharding.MeshError) as e:
        raise SystemExit(f"error: {e}") from None
    print(json.dumps(out))


if __name__ == "__main__":
    _prepare_process(sys.argv)
    from absl import app

    _flags = _define_flags()
    app.run(lambda argv: main(argv, _flags))
