"""Ablation tables from per-(row, seed) results: the statistics, and the .md / .csv / .tex / .png / .json files.

Reads results, runs nothing: flamingo_jax.ablate runs the rows (experiments/ablations.py) and calls write_tables.

Input: `meta`, one dict per row in table order (name, label, group, runnable, reason, note, paper = {overall,
params, step_time, scores}) and `results` {row: [per-seed dict(scores={dev: value in the tables' units},
params, step_time)]}. Per row:
  scores      mean +- std over seeds of each DEV score (std: sample std, ddof=1; 0 for one seed);
  overall     per seed mean over the five DEV benchmarks of 100 * score / denominator (Table 3's overall score;
              the fine-tuned SotA of Table 1 by default, configurable), then mean +- std over seeds;
  delta       overall - baseline overall (ours and the paper's);
  agrees      sign(delta ours) == sign(delta paper): 'yes' / 'no'; 'n/a' for the baseline or no paper figure;
  noise       'within noise' when |delta ours| <= sqrt(std_row^2 + std_base^2) (the effect is not resolved);
              'single seed' when the row or the baseline has one seed (no noise estimate).
"""

from __future__ import annotations

import csv
import math
import os
from typing import Any, Mapping, Sequence

from flamingo_jax.evaluation.paper_tables import DEV, DEV_TO_WORLD, SOTA
from flamingo_jax.files import write_json

BASELINE = "baseline"


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """(mean, sample std with ddof=1; 0 for one value); (nan, nan) for none."""
    v = [float(x) for x in values if x is not None and math.isfinite(float(x))]
    if not v:
        return float("nan"), float("nan")
    m = sum(v) / len(v)
    if len(v) == 1:
        return m, 0.0
    return m, math.sqrt(sum((x - m)**2 for x in v) / (len(v) - 1))


def overall(scores: Mapping[str, float], denominators: Mapping[str, float] | None = None) -> float:
    """Mean over the five DEV benchmarks of 100 * score / denominator; nan if one is missing."""
    den = dict(SOTA, **(denominators or {}))
    if any(k not in scores for k in DEV):
        return float("nan")
    return sum(100.0 * float(scores[k]) / den[k] for k in DEV) / len(DEV)


def _sign(x: float, eps: float = 1e-9) -> int:
    return 0 if abs(x) <= eps else (1 if x > 0 else -1)


def summarize(meta: Sequence[Mapping[str, Any]], results: Mapping[str, Sequence[Mapping[str, Any]]],
              denominators: Mapping[str, float] | None = None, baseline: str = BASELINE) -> list[dict]:
    """One dict per row of `meta` with the statistics of the module docstring."""
    rows = []
    for m in meta:
        runs = list(results.get(m["name"], []))
        per_seed = [overall(r.get("scores", {}), denominators) for r in runs]
        o_mean, o_std = mean_std(per_seed)
        scores = {k: mean_std([r.get("scores", {}).get(k, float("nan")) for r in runs]) for k in DEV}
        params = [r["params"] for r in runs if r.get("params") is not None]
        rows.append(
            dict(name=m["name"], label=m.get("label", m["name"]), group=m.get("group",
                                                                              ""), runnable=m.get("runnable", True),
                 reason=m.get("reason", ""), note=m.get("note", ""), seeds=len(runs), scores=scores,
                 overall=(o_mean, o_std), overall_per_seed=per_seed, params=params[0] if params else None,
                 step_time=mean_std([r.get("step_time") for r in runs])[0], paper=dict(m.get("paper", {}))))
    base = next((r for r in rows if r["name"] == baseline), None)
    for r in rows:
        p_over = r["paper"].get("overall") or float("nan")
        p_base = base["paper"].get("overall") if base else float("nan")
        r["delta"] = (r["overall"][0] - base["overall"][0]) if base else float("nan")
        r["paper_delta"] = (p_over - p_base) if (base and p_base) else float("nan")
        if base is None or r["name"] == baseline or not all(map(math.isfinite, (r["delta"], r["paper_delta"]))):
            r["agrees"], r["noise"] = "n/a", ""
            continue
        r["agrees"] = "yes" if _sign(r["delta"]) == _sign(r["paper_delta"]) else "no"
        if min(r["seeds"], base["seeds"]) < 2:
            r["noise"] = "single seed"
        else:
            noise = math.sqrt(r["overall"][1]**2 + base["overall"][1]**2)
            r["noise"] = "within noise" if abs(r["delta"]) <= noise else ""
    return rows


# ---------------------------------------------------------------------------------------------- formats


def fmt_params(n: float | None) -> str:
    if n is None or not math.isfinite(n):
        return "-"
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f}{unit}"
    return str(int(n))


def _pm(ms: tuple[float, float], digits: int = 1) -> str:
    m, s = ms
    if not math.isfinite(m):
        return "-"
    return f"{m:.{digits}f} ± {s:.{digits}f}"


def _num(x: float | None, digits: int = 1) -> str:
    return "-" if x is None or not math.isfinite(x) else f"{x:.{digits}f}"


def _signed(x: float, digits: int = 1) -> str:
    return "-" if not math.isfinite(x) else f"{x:+.{digits}f}"


HEADER = [
    "row", "group", "change", "params", "step time (s)", *[f"{k}" for k in DEV], "overall (ours)", "seeds",
    "paper overall", "Δ ours", "Δ paper", "direction agrees", "note"
]


def table_cells(r: Mapping[str, Any]) -> list[str]:
    if not r["runnable"]:
        return [
            r["name"], r["group"], r["label"], "-", "-", *["-"] * len(DEV), "not run", "0",
            _num(r["paper"].get("overall")), "-",
            _signed(r["paper_delta"]), "n/a", r["reason"]
        ]
    agrees = r["agrees"] + (f" ({r['noise']})" if r.get("noise") else "")
    st = r["step_time"]
    return [
        r["name"], r["group"], r["label"],
        fmt_params(r["params"]), "-" if st is None or not math.isfinite(st) else f"{st:.3f}",
        *[_pm(r["scores"][k]) for k in DEV],
        _pm(r["overall"]),
        str(r["seeds"]),
        _num(r["paper"].get("overall")),
        _signed(r["delta"]),
        _signed(r["paper_delta"]), agrees, r["note"]
    ]


def to_markdown(rows: Sequence[Mapping[str, Any]], title: str, extra: Mapping[str, Any] | None = None,
                denominators: Mapping[str, float] | None = None) -> str:
    den = dict(SOTA, **(denominators or {}))
    lines = [
        f"# {title}", "", "DEV columns (world analogue in brackets when run on the world): " +
        ", ".join(f"{k} [{DEV_TO_WORLD[k]}]" for k in DEV) + ". Scores: 4 shots, mean ± std over seeds. Overall = "
        "mean of 100 * score / denominator with denominators " + ", ".join(f"{k} {den[k]}" for k in DEV) +
        ". Δ = overall - baseline overall. 'direction agrees': the sign of our Δ equals the paper's.", ""
    ]
    lines.append("| " + " | ".join(HEADER) + " |")
    lines.append("|" + "---|" * len(HEADER))
    for r in rows:
        lines.append("| " + " | ".join(c.replace("|", "/") for c in table_cells(r)) + " |")
    ran = [r for r in rows if r["runnable"] and r["name"] != BASELINE and r["agrees"] != "n/a"]
    agree = sum(r["agrees"] == "yes" for r in ran)
    resolved = [r for r in ran if not r.get("noise")]
    lines += [
        "", f"Direction agrees with the paper on {agree} of {len(ran)} rows run "
        f"({sum(r['agrees'] == 'yes' for r in resolved)} of {len(resolved)} rows whose effect exceeds "
        "the seed noise)."
    ]
    if extra:
        lines += ["", "Run: " + ", ".join(f"{k} = {v}" for k, v in extra.items())]
    return "\n".join(lines) + "\n"


def to_csv(rows: Sequence[Mapping[str, Any]], path: str) -> None:
    header = [
        "row", "group", "label", "runnable", "seeds", "params", "step_time_s",
        *[f"{k}_{s}" for k in DEV for s in ("mean", "std")], "overall_mean", "overall_std", "paper_overall", "delta",
        "paper_delta", "agrees", "noise", "reason", "note"
    ]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        for r in rows:
            w.writerow([
                r["name"], r["group"], r["label"], r["runnable"], r["seeds"], r["params"] or "", r["step_time"],
                *[x for k in DEV for x in r["scores"][k]], *r["overall"], r["paper"].get("overall", ""), r["delta"],
                r["paper_delta"], r["agrees"],
                r.get("noise", ""), r["reason"], r["note"]
            ])


def _tex_escape(s: str) -> str:
    for a, b in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("_", r"\_"), ("#", r"\#"),
                 ("->", r"$\rightarrow$"), ("±", r"$\pm$"), ("Δ", r"$\Delta$")):
        s = s.replace(a, b)
    return s


def to_latex(rows: Sequence[Mapping[str, Any]], caption: str) -> str:
    cols = [
        "", "Change", "Params", "Step (s)", "COCO", "OKVQA", "VQAv2", "MSVDQA", "VATEX", "Overall", "Paper", "Agrees"
    ]
    out = [
        r"\begin{table}[t]", r"\centering", r"\small", r"\begin{tabular}{ll" + "r" * (len(cols) - 2) + "}", r"\toprule",
        " & ".join(cols) + r" \\", r"\midrule"
    ]
    for r in rows:
        c = table_cells(r)
        body = [r["group"], r["label"], c[3], c[4], *c[5:5 + len(DEV)], c[5 + len(DEV)], c[7 + len(DEV)], r["agrees"]]
        out.append(" & ".join(_tex_escape(x) for x in body) + r" \\")
    out += [r"\bottomrule", r"\end{tabular}", r"\caption{" + _tex_escape(caption) + "}", r"\end{table}"]
    return "\n".join(out) + "\n"


def bar_chart(rows: Sequence[Mapping[str, Any]], path: str, title: str) -> None:
    """Top: overall score per row (ours: bars with the seed std, green/red = direction agrees or not; the paper's:
    black ticks). Bottom: the effect (delta vs baseline) of each row, ours beside the paper's."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["name"] for r in rows]
    x = list(range(len(rows)))
    nan0 = lambda v: 0.0 if v is None or not math.isfinite(v) else v  # noqa: E731
    ours = [nan0(r["overall"][0]) if r["runnable"] else 0.0 for r in rows]
    err = [nan0(r["overall"][1]) if r["runnable"] else 0.0 for r in rows]
    paper = [r["paper"].get("overall") or float("nan") for r in rows]
    colours = ["tab:green" if r["agrees"] == "yes" else "tab:red" if r["agrees"] == "no" else "tab:grey" for r in rows]
    fig, (ax, bx) = plt.subplots(2, 1, figsize=(max(6.0, 0.42 * len(rows) + 2), 7.5), sharex=True)
    ax.bar(x, ours, yerr=err, color=colours, alpha=0.85, capsize=2, label="ours (green: direction agrees, red: not)")
    ax.plot(x, paper, "k_", markersize=14, markeredgewidth=2, label="paper")
    top = max([v for v in ours + paper if math.isfinite(v)] + [1.0])
    ax.set_ylim(0, 1.3 * top)
    ax.set_ylabel("overall score")
    ax.set_title(title)
    ax.legend(fontsize=8, loc="upper center", ncol=2)
    w = 0.4
    bx.bar([i - w / 2 for i in x], [nan0(r["delta"]) if r["runnable"] else 0.0 for r in rows], w, color=colours,
           alpha=0.85, label="ours")
    bx.bar([i + w / 2 for i in x], [nan0(r["paper_delta"]) for r in rows], w, color="black", alpha=0.6, label="paper")
    bx.axhline(0, color="black", linewidth=0.8)
    bx.set_ylabel("Δ overall vs baseline")
    bx.legend(fontsize=8)
    bx.set_xticks(x)
    bx.set_xticklabels(names, rotation=60, ha="right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_tables(out_dir: str, name: str, meta: Sequence[Mapping[str, Any]],
                 results: Mapping[str, Sequence[Mapping[str, Any]]], *, denominators: Mapping[str, float] | None = None,
                 extra: Mapping[str, Any] | None = None) -> dict[str, str]:
    """Writes <out_dir>/<name>.md, .csv, .tex, .png and .json (the summary); returns {format: path}."""
    os.makedirs(out_dir, exist_ok=True)
    rows = summarize(meta, results, denominators)
    title = {
        "table3": "Table 3: ablations (4 shots, DEV benchmarks)",
        "table10": "Table 10: extra ablations (4 shots, DEV benchmarks)"
    }.get(name, f"Ablations: {name}")
    paths = {ext: os.path.join(out_dir, f"{name}.{ext}") for ext in ("md", "csv", "tex", "png", "json")}
    with open(paths["md"], "w") as f:
        f.write(to_markdown(rows, title, extra, denominators))
    to_csv(rows, paths["csv"])
    with open(paths["tex"], "w") as f:
        f.write(to_latex(rows, title))
    bar_chart(rows, paths["png"], title)
    write_json(paths["json"], dict(rows=rows, extra=dict(extra or {}), denominators=dict(SOTA, **(denominators or {}))),
               indent=1)
    return paths
