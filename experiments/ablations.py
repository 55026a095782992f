"""Paper Table 3 and Table 10: every ablation as a NAMED override of one baseline config (never a trainer copy).

    python -m flamingo_jax.ablate --config experiments/ablations.py:table3 --workdir DIR [--rows a,b] [--seeds 2]
    python -m flamingo_jax.ablate --config experiments/ablations.py:table10,base=flamingo_3b --workdir DIR

Arg: the table ('table3', 'table10' or 'all'), then knobs:
  base          experiments/<base>.py gives the baseline (default 'world': experiments/world.py, the world-scale model that reproduce trains; 'flamingo_3b'
                for the paper's setup). base_arg: its arg string with ';' for ',' (e.g. 'xattn_every=1;vision=nfnet:F6').
  steps         total_steps of every run (0 = the base's own). lm_layers: LM depth of the world base (default 4,
                so that 'every 2nd / every 4th / single in the middle' are different placements; 0 = the base's).
  pretrained    directory of pretrained towers (flamingo_jax.pretrain): the world base and its vision swaps load
                <pretrained>/vision_<kind>_<size>_<hash> and <pretrained>/lm_<hash> (pretrain.default_path);
                `ablate` pretrains the missing ones before training. '' = random frozen towers.
  clip_vit, nfnet_f0, lm_c4
                paper scale: converted checkpoints (flamingo_jax.convert) of the swapped towers.
  pretrain_steps  steps of each pretraining stage `ablate` runs for a missing tower (default 400).
  laion_proxy   world only: run the 'image-text pairs -> LAION' rows with the world's clip_pairs corpus (one
                clean COCO-style caption per image: NOT noisier than the ALIGN/LTIP analogues, so the paper's
                direction is not expected) instead of marking them not runnable.

The config holds `base` (the baseline experiment config), `row_order` (the table's order) and `rows`: row_name -> label, table, group,
paper (the paper's DEV scores, overall, params, step time), overrides ([(dotted path, value)]; a path ending in
'+' appends to a list, in '-' removes from one), runnable and reason (why not on this base), note.
`flamingo_jax.ablation_rows.apply_row(base, row)` applies a row with strict key checking (an unknown path is an error).
The same row definitions apply to the world base and to paper-scale bases: only where a row names a specific
tower (vision swaps, resampler sizes) or dataset (LAION) does it pick the world or paper variant below.
"""

from __future__ import annotations

import os

import ml_collections

from flamingo_jax import configs
from flamingo_jax.config_files import load_config
from flamingo_jax.ablation_rows import apply_row, is_world_data, is_world_scale  # noqa: F401  (apply_row re-exported)
from flamingo_jax.evaluation.paper_tables import DEV
from flamingo_jax.models import vision_config

TABLES = ("table3", "table10", "all")
LM_TRAINABLE = "lm/.*"

# Paper Table 3 (Flamingo-3B, 4 shots): params (B), step time (s), COCO, OKVQA, VQAv2, MSVDQA, VATEX, overall.
TABLE3 = {
    "baseline": (3.2, 1.74, 86.5, 42.1, 55.8, 36.3, 53.4, 70.7),
    "no_video": (3.2, 1.42, 84.2, 43.0, 53.9, 34.5, 46.0, 67.3),
    "no_image_pairs": (3.2, 0.95, 66.3, 39.2, 51.6, 32.0, 41.6, 60.9),
    "laion": (3.2, 1.74, 79.5, 41.4, 53.5, 33.9, 47.6, 66.4),
    "no_m3w": (3.2, 1.02, 54.1, 36.5, 52.7, 31.4, 23.5, 53.4),
    "round_robin": (3.2, 1.68, 76.1, 39.8, 52.1, 33.2, 40.8, 62.9),
    "no_tanh": (3.2, 1.74, 78.4, 40.5, 52.9, 35.9, 47.5, 66.5),
    "vanilla_xattn": (2.4, 1.16, 80.6, 41.5, 53.4, 32.9, 50.7, 66.9),
    "grafting": (3.3, 1.74, 79.2, 36.1, 50.8, 32.2, 47.8, 63.1),
    "xattn_single": (2.0, 0.87, 71.5, 38.1, 50.2, 29.1, 42.3, 59.8),
    "xattn_every4": (2.3, 1.02, 82.3, 42.7, 55.1, 34.6, 50.8, 68.8),
    "xattn_every2": (2.6, 1.24, 83.7, 41.0, 55.8, 34.5, 49.7, 68.2),
    "mlp_resampler": (3.2, 1.85, 78.6, 42.2, 54.7, 35.2, 44.7, 66.6),
    "transformer_resampler": (3.2, 1.81, 83.2, 41.7, 55.6, 31.5, 48.3, 66.7),
    "clip_vit": (3.1, 1.58, 76.5, 41.6, 53.4, 33.2, 44.5, 64.9),
    "nfnet_f0": (2.9, 1.45, 73.8, 40.5, 52.8, 31.1, 42.9, 62.7),
    "lm_unfrozen_random": (3.2, 2.42, 74.8, 31.5, 45.6, 26.9, 50.1, 57.8),
    "lm_unfrozen_pretrained": (3.2, 2.42, 81.2, 33.7, 47.4, 31.0, 53.9, 62.7),
}
# Paper Table 10 (same setup): overall score only.
TABLE10 = {
    "resampler_small": 67.9,
    "resampler_large": 69.0,
    "attend_all_previous": 63.5,
    "p_next_0": 69.6,
    "p_next_1": 70.4,
    "lm_c4": 62.8,
    "vision_unfrozen_random": 61.4,
    "vision_unfrozen_pretrained": 68.1,
    "cotrain_text_random": 55.9,
    "cotrain_text_pretrained": 68.6,
    "laion_clip": 54.7,
    "m3w_laion_vtp_clip": 64.9,
}

GROUPS = {
    "baseline": "-",
    "no_video": "(i)",
    "no_image_pairs": "(i)",
    "laion": "(i)",
    "no_m3w": "(i)",
    "round_robin": "(ii)",
    "no_tanh": "(iii)",
    "vanilla_xattn": "(iv)",
    "grafting": "(iv)",
    "xattn_single": "(v)",
    "xattn_every4": "(v)",
    "xattn_every2": "(v)",
    "mlp_resampler": "(vi)",
    "transformer_resampler": "(vi)",
    "clip_vit": "(vii)",
    "nfnet_f0": "(vii)",
    "lm_unfrozen_random": "(viii)",
    "lm_unfrozen_pretrained": "(viii)",
}

LABELS = {
    "baseline": "Flamingo (baseline)",
    "no_video": "w/o video-text pairs",
    "no_image_pairs": "w/o image-text pairs",
    "laion": "image-text pairs -> LAION",
    "no_m3w": "w/o M3W",
    "round_robin": "round robin (vs accumulation)",
    "no_tanh": "no tanh gating",
    "vanilla_xattn": "VANILLA XATTN",
    "grafting": "GRAFTING",
    "xattn_single": "xattn single, in the middle",
    "xattn_every4": "xattn every 4th",
    "xattn_every2": "xattn every 2nd",
    "mlp_resampler": "MLP resampler",
    "transformer_resampler": "Transformer resampler",
    "clip_vit": "vision: CLIP ViT-L/14",
    "nfnet_f0": "vision: NFNet-F0",
    "lm_unfrozen_random": "LM unfrozen, random init",
    "lm_unfrozen_pretrained": "LM unfrozen, pretrained",
    "resampler_small": "resampler small",
    "resampler_large": "resampler large",
    "attend_all_previous": "attend to all previous images",
    "p_next_0": "always previous image (p_next=0)",
    "p_next_1": "always next image (p_next=1)",
    "lm_c4": "LM pretrained on C4",
    "vision_unfrozen_random": "vision unfrozen, random init",
    "vision_unfrozen_pretrained": "vision unfrozen, pretrained",
    "cotrain_text_random": "co-train LM on text, random init",
    "cotrain_text_pretrained": "co-train LM on text, pretrained (lr x0.1)",
    "laion_clip": "LAION400M + CLIP",
    "m3w_laion_vtp_clip": "M3W + LAION400M + VTP + CLIP",
}


def _pretrained_path(root: str, kind: str, sub: ml_collections.ConfigDict, data: ml_collections.ConfigDict) -> str:
    if not root:
        return ""
    from flamingo_jax.pretrain import default_path

    return default_path(root, kind, sub, data)


def make_base(a: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The baseline config: experiments/<a.base>.py with the world knobs applied."""
    base_arg = a.base_arg.replace(";", ",")
    base = load_config(a.base + (f":{base_arg}" if base_arg else ""), folder=os.path.dirname(os.path.abspath(__file__)))
    with base.unlocked():
        if a.steps:
            base.total_steps = a.steps
            base.optimizer.warmup_steps = min(base.optimizer.warmup_steps, max(a.steps // 10, 1))
        if is_world_scale(base):
            if a.lm_layers:
                base.model.lm.num_layers = a.lm_layers
            base.pretrained.vision = _pretrained_path(a.pretrained, "vision", base.model.vision, base.data)
            base.pretrained.lm = _pretrained_path(a.pretrained, "lm", base.model.lm, base.data)
    return base


def _world_vision(base: ml_collections.ConfigDict) -> dict[str, ml_collections.ConfigDict]:
    """World-scale stand-ins of the paper's encoders (each contrastively pretrained by flamingo_jax.pretrain).

    The world baseline keeps the base's encoder (the paper's strongest encoder, NFNet-F6, plays this role);
    'clip_vit' becomes the OTHER architecture at a similar size (ViT-tiny, or a tiny NFNet with strides giving
    the same 16 tokens at 32px) and 'nfnet_f0' a SMALLER encoder of the baseline's family (half width)."""
    s = base.model.vision.image_size
    if base.model.vision.kind == "nfnet":
        return {
            "clip_vit": vision_config("vit", "tiny", image_size=s),
            "nfnet_f0": vision_config("nfnet", "tiny", image_size=s, strides=tuple(base.model.vision.strides),
                                      widths=tuple(w // 2 for w in base.model.vision.widths)),
        }
    return {
        "clip_vit": vision_config("nfnet", "tiny", image_size=s, strides=(1, 1, 1, 2)),
        "nfnet_f0": vision_config("vit", "tiny", image_size=s, width=16, layers=1),
    }


def _paper_vision(a: ml_collections.ConfigDict) -> dict[str, tuple]:
    return {
        "clip_vit": (vision_config("vit", "L/14", image_size=224), 224, a.clip_vit),
        "nfnet_f0": (vision_config("nfnet", "F0", image_size=320), 320, a.nfnet_f0),
    }


def _rows(a: ml_collections.ConfigDict, base: ml_collections.ConfigDict) -> dict[str, dict]:
    """name -> dict(overrides, runnable, reason, note) for every row of both tables."""
    world_data, world_scale = is_world_data(base), is_world_scale(base)
    r: dict[str, dict] = {}

    def row(name, overrides, runnable=True, reason="", note=""):
        r[name] = dict(overrides=list(overrides), runnable=runnable, reason=reason, note=note)

    unfreeze_lm = [("trainable+", [LM_TRAINABLE]), ("model.param_dtype.lm", "float32")]
    unfreeze_vision = [("trainable+", ["vision/.*"]), ("model.param_dtype.vision", "float32")]

    # LAION swap: a data-side change. World: the clip_pairs corpus (only with laion_proxy). Real data: the
    # image_text_pairs builder prepared from LAION-400M files in the data dir takes the ALIGN slot, LTIP is dropped.
    if world_data:
        laion = [("data.datasets.align.builder_config", "clip_pairs"), ("data.mixture-", ["ltip"])]
        laion_ok = bool(a.laion_proxy)
        laion_reason = "" if laion_ok else ("the world has no LAION-like (noisier web) pairs corpus; "
                                            "laion_proxy=true runs it with the clip_pairs corpus")
        laion_note = ("proxy: world clip_pairs (clean one-caption pairs, the contrastive-pretraining corpus)"
                      if laion_ok else "")
    else:
        laion = [("data.datasets.align.builder", "image_text_pairs"), ("data.datasets.align.builder_config", ""),
                 ("data.mixture-", ["ltip"])]
        laion_ok, laion_reason = True, ""
        laion_note = "align slot = image_text_pairs prepared from LAION-400M files"

    def vision_swap(name):
        if world_scale:
            v = _world_vision(base)[name]
            ov = [("model.vision", v), ("pretrained.vision", _pretrained_path(a.pretrained, "vision", v, base.data))]
            return ov, True, "", f"world stand-in: {v.kind}-{v.size} " + ("strides (1,1,1,2)" if v.kind == "nfnet" else
                                                                          f"width {v.width}, {v.layers} layer")
        v, size, path = _paper_vision(a)[name]
        ov = [("model.vision", v), ("data.image_size", size), ("pretrained.vision", path)]
        return ov, True, "", "" if path else f"no {name} checkpoint given ({name}=PATH): random frozen tower"

    row("baseline", [])
    # (i) data
    row("no_video", [("data.mixture-", ["vtp"])])
    row("no_image_pairs", [("data.mixture-", ["align", "ltip"])])
    row("laion", laion, laion_ok, laion_reason, laion_note)
    row("no_m3w", [("data.mixture-", ["m3w"])])
    # (ii) optimisation
    # Same number of GRADIENT steps as the baseline (the paper: 1M gradient steps = 250k accumulated updates):
    # one update per dataset batch, so len(mixture) times the baseline's updates.
    n = len(base.data.mixture)
    row("round_robin", [("data.mode", "round_robin"), ("total_steps", n * int(base.total_steps))],
        note=f"{n}x the baseline's updates = the same number of gradient steps")
    # (iii)-(v) cross-attention
    row("no_tanh", [("model.xattn.gating", False)])
    row("vanilla_xattn", [("model.xattn.kind", "vanilla")])
    row("grafting", [("model.xattn.kind", "grafting")])
    row("xattn_single", [("model.xattn.placement", "middle")])
    row("xattn_every4", [("model.xattn.every", 4)])
    row("xattn_every2", [("model.xattn.every", 2)])
    # (vi) resampler: MLP / Transformer at a similar parameter budget (resampler.py)
    row("mlp_resampler", [("model.resampler.kind", "mlp")])
    row("transformer_resampler", [("model.resampler.kind", "transformer")])
    # (vii) vision encoder
    for name in ("clip_vit", "nfnet_f0"):
        row(name, *vision_swap(name))
    # (viii) LM
    row("lm_unfrozen_random", [*unfreeze_lm, ("pretrained.lm", "")])
    row("lm_unfrozen_pretrained", unfreeze_lm)

    # Table 10. Resampler sizes are not given in the paper [?]: small = a third of the depth, large = twice.
    depth = base.model.resampler.depth
    row("resampler_small", [("model.resampler.depth", max(depth // 3, 1))],
        note=f"[?] depth {max(depth // 3, 1)} (baseline {depth})")
    row("resampler_large", [("model.resampler.depth", 2 * depth)], note=f"[?] depth {2 * depth} (baseline {depth})")
    row("attend_all_previous", [("model.xattn.mask", "all_previous")])
    row("p_next_0", [("data.datasets.m3w.p_next", 0.0)])
    row("p_next_1", [("data.datasets.m3w.p_next", 1.0)])
    if world_data:
        row(
            "lm_c4", [], False, "the world has one text corpus: an LM pretrained on a second (C4-like) corpus "
            "needs data the world lacks")
    else:
        row("lm_c4", [("pretrained.lm", a.lm_c4)], bool(a.lm_c4),
            "" if a.lm_c4 else "needs a converted C4-pretrained LM: lm_c4=PATH")
    row("vision_unfrozen_random", [*unfreeze_vision, ("pretrained.vision", "")])
    row("vision_unfrozen_pretrained", unfreeze_vision)
    cotrain = [("data.mixture+", ["text"]), *unfreeze_lm]
    row("cotrain_text_random", [*cotrain, ("pretrained.lm", "")])
    row("cotrain_text_pretrained", [*cotrain, ("optimizer.lr_multipliers+", [f"{LM_TRAINABLE}=0.1"])])
    clip_ov, _, _, clip_note = vision_swap("clip_vit")
    only_laion = [("data.mixture-", ["m3w", "vtp"])]
    row("laion_clip", [*laion, *only_laion, *clip_ov], laion_ok, laion_reason,
        "; ".join(filter(None, [laion_note, clip_note])))
    row("m3w_laion_vtp_clip", [*laion, *clip_ov], laion_ok, laion_reason,
        "; ".join(filter(None, [laion_note, clip_note])))
    return r


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    table, _, knobs = (arg or "table3").partition(",")
    if "=" in table:  # knobs only: default table
        table, knobs = "table3", arg
    if table not in TABLES:
        raise ValueError(f"ablations: unknown table {table!r}; choose one of {TABLES}")
    a = configs.parse_arg(knobs, base="world", base_arg="", steps=0, lm_layers=4, pretrained="", clip_vit="",
                          nfnet_f0="", lm_c4="", laion_proxy=False, pretrain_steps=400)
    base = make_base(a)
    rows = _rows(a, base)
    names = {"table3": list(TABLE3), "table10": ["baseline", *TABLE10], "all": [*TABLE3, *TABLE10]}[table]

    config = ml_collections.ConfigDict()
    config.table = table
    config.knobs = a
    config.base = base
    config.dev_tasks = list(DEV)
    # flamingo_jax.pretrain stage fields for towers `ablate` has to pretrain (pretrain.common.pretrain_config)
    config.pretrain = ml_collections.ConfigDict(dict(steps=a.pretrain_steps))
    config.row_order = names  # ConfigDict iterates its keys sorted: this is the table's order
    config.rows = ml_collections.ConfigDict()
    for name in names:
        info = rows[name]
        paper = ml_collections.ConfigDict(dict(params=0.0, step_time=0.0, overall=TABLE10.get(name, 0.0), scores={}))
        if name in TABLE3:
            p = TABLE3[name]
            paper.params, paper.step_time, paper.overall = p[0], p[1], p[7]
            paper.scores = dict(zip(DEV, p[2:7]))
        config.rows[name] = ml_collections.ConfigDict(
            dict(label=LABELS[name], table="3" if name in TABLE3 else "10", group=GROUPS.get(name, "T10"), paper=paper,
                 overrides=info["overrides"], runnable=info["runnable"], reason=info["reason"], note=info["note"]))
    return config


__all__ = ["apply_row", "get_config", "TABLE3", "TABLE10", "DEV"]
