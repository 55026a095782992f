"""One self-contained checkpoint (frozen + trainable params + config) from a training workdir.

  python -m flamingo_jax.tools.export --workdir DIR [--step N] --out OUT [--format flamingo_jax|hf-lm|openflamingo]

--format hf-lm writes the run's LM as a HuggingFace directory and --format openflamingo its trainable weights
as an OpenFlamingo checkpoint.pt (flamingo_jax.convert.outward); the default, described here, is the whole model:

OUT/params/      Orbax (StandardCheckpointer) checkpoint of the whole param tree (plain arrays)
OUT/config.json  {"format", "config": the training config, "step", "params_sha256" (params_fingerprint of
                 the whole tree), "frozen": the workdir's frozen manifest, "source": the workdir}

No model is built and no device mesh is needed: arrays are read to host memory. The frozen subtrees come from
DIR/frozen (or from the converted checkpoints it references, whose sha256 is checked), the trainable ones
from the step checkpoint (the newest intact one unless --step). `load_exported(OUT)` returns (params, config)
for evaluation.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

import jax
import ml_collections

from flamingo_jax.checkpoint import read_workdir
from flamingo_jax.checkpoint.restore import host_targets

FORMAT = "flamingo_jax.export/1"


def export(workdir: str, out: str, step: int | None = None, *, force: bool = False) -> str:
    """Writes OUT (see the module docstring); returns its absolute path."""
    import orbax.checkpoint as ocp

    from flamingo_jax.convert.store import params_fingerprint

    out = os.path.abspath(out)
    config_path = os.path.join(out, "config.json")
    if os.path.exists(config_path) and not force:
        raise FileExistsError(f"{out} already holds an export: choose another --out or pass --force")
    params, config, step, manifest = read_workdir(workdir, step)
    os.makedirs(out, exist_ok=True)
    ckptr = ocp.StandardCheckpointer()
    ckptr.save(os.path.join(out, "params"), params, force=True)
    ckptr.wait_until_finished()
    record = {
        "format": FORMAT, "config": json.loads(config.to_json_best_effort()), "step": step,
        "params_sha256": params_fingerprint(params), "frozen": manifest, "source": os.path.abspath(workdir)
    }
    with open(config_path + ".tmp", "w") as f:
        json.dump(record, f, indent=1)
    os.replace(config_path + ".tmp", config_path)  # last: a half-written export has no config.json
    return out


def load_exported(path: str, *, shardings: Any = None, verify: bool = False) -> tuple[dict, ml_collections.ConfigDict]:
    """(params, config) of an export. params: numpy arrays, or jax.Arrays placed by `shardings` (one
    jax.sharding.Sharding for every leaf, or a pytree of them). verify: recompute and check the sha256."""
    import orbax.checkpoint as ocp

    from flamingo_jax.convert.store import params_fingerprint

    path = os.path.abspath(path)
    config_path = os.path.join(path, "config.json")
    if not os.path.isfile(config_path):
        raise FileNotFoundError(f"{path} is not an export (no config.json): run "
                                "`python -m flamingo_jax.tools.export --workdir DIR --out OUT` first")
    with open(config_path) as f:
        record = json.load(f)
    if record.get("format") != FORMAT:
        raise ValueError(f"{config_path}: unknown format {record.get('format')!r} (expected {FORMAT!r})")
    ckptr = ocp.StandardCheckpointer()
    params_dir = os.path.join(path, "params")
    tree = ckptr.metadata(params_dir).item_metadata.tree
    if shardings is None:
        target = host_targets(tree)
    else:
        if isinstance(shardings, jax.sharding.Sharding):
            shardings = jax.tree.map(lambda _: shardings, tree)
        target = jax.tree.map(lambda m, s: jax.ShapeDtypeStruct(tuple(m.shape), m.dtype, sharding=s), tree, shardings)
    params = ckptr.restore(params_dir, target)
    if verify and params_fingerprint(params) != record["params_sha256"]:
        raise ValueError(f"{path}: params do not match the recorded sha256 (damaged export)")
    return params, ml_collections.ConfigDict(record["config"])


def lm_template(manifest: dict) -> str | None:
    """The HuggingFace directory the run's frozen LM was converted from (recorded by flamingo_jax.convert)."""
    from flamingo_jax.convert.store import read_manifest

    src = manifest.get("subtrees", {}).get("lm", {})
    if src.get("source") != "pretrained" or not src.get("path"):
        return None
    source = read_manifest(src["path"]).get("source", {})
    return source.get("lm") or (source.get("src") if source.get("format") == "hf" else None)


def export_as(fmt: str, workdir: str, out: str, step: int | None = None, *, template: str | None = None,
              force: bool = False) -> str:
    """fmt 'hf-lm': the run's LM as a HuggingFace directory (config.json + model.safetensors) at OUT;
    'openflamingo': the trainable weights as an OpenFlamingo checkpoint file OUT (flamingo_jax.convert.outward)."""
    from flamingo_jax.convert import outward

    params, config, step, manifest = read_workdir(workdir, step)
    if fmt == "openflamingo":
        return outward.flamingo_to_openflamingo(params, config, out, force=force)
    template = template or lm_template(manifest)
    if template is None:
        raise outward.ConversionError("the run's LM was not converted from a HuggingFace directory: pass "
                                      "--lm-template HF_DIR (its architecture and tensor names)")
    return outward.lm_to_hf(params["lm"], config.lm, template, out, force=force)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True, help="a training workdir (flamingo_jax.train --workdir)")
    parser.add_argument("--step", type=int, default=None, help="the step to export (default: the newest intact)")
    parser.add_argument("--out", required=True, help="output directory (a file ending .pt for openflamingo)")
    parser.add_argument(
        "--format", default="flamingo_jax", choices=["flamingo_jax", "hf-lm", "openflamingo"],
        help="flamingo_jax: the whole model (Orbax, load_exported); hf-lm: the LM as a HuggingFace "
        "directory; openflamingo: the trainable weights as an OpenFlamingo checkpoint.pt")
    parser.add_argument(
        "--lm-template", default=None,
        help="hf-lm: the HuggingFace directory of the LM's architecture (default: the one the "
        "run's LM was converted from)")
    parser.add_argument("--force", action="store_true", help="overwrite an existing export")
    args = parser.parse_args(argv)
    from flamingo_jax.checkpoint import CheckpointError
    from flamingo_jax.convert.weights import ConversionError

    try:
        if args.format != "flamingo_jax":
            path = export_as(args.format, args.workdir, args.out, args.step, template=args.lm_template,
                             force=args.force)
            print(json.dumps({"out": path, "format": args.format}))
            return
        out = export(args.workdir, args.out, args.step, force=args.force)
    except (CheckpointError, ConversionError, FileExistsError, FileNotFoundError) as e:
        raise SystemExit(f"error: {e}") from None
    with open(os.path.join(out, "config.json")) as f:
        record = json.load(f)
    print(json.dumps({"out": out, "step": record["step"], "params_sha256": record["params_sha256"]}))


if __name__ == "__main__":
    main()
