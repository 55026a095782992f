"""Our train step beside OpenFlamingo's, back to back on the same machine: JSON lines, then a summary line.

    python benchmarks/vs_openflamingo.py [--presets tiny,small,wide] [--rounds 3] \
        [--peer-python ~/.cache/fj-peer/venv/bin/python] [--peer-script ../shared/peer/tiny_of.py]

The protocol: per round and preset, run benchmarks/train_step.py and the peer's
tiny_of.py (OpenFlamingo 2.0.1, same preset, `--lm llama`) one after the other, alternating which goes first
from round to round; each run is a fresh process. The machine's speed drifts between runs (the matmul probe in
each of our lines shows it), so the summary reports, per preset, the median of our step, the median of
OpenFlamingo's, and the median of the per-round ratios ours / OpenFlamingo. Peak resident memory is the
process's maxrss on both sides (ours from getrusage inside the benchmark, OpenFlamingo's from /usr/bin/time
when present). State bytes: trainable params + optimizer state (OpenFlamingo's: 12 bytes per trainable fp32
param). Set the peer up once with `bash ../shared/peer/setup.sh`.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
PEER_DIR = os.path.expanduser("~/.cache/fj-peer")
PEER_STEPS = {"tiny": 10, "small": 10, "wide": 6}


def ours(preset: str) -> dict:
    out = subprocess.run([sys.executable, os.path.join(HERE, "train_step.py"), "--preset", preset], capture_output=True,
                         text=True, check=True).stdout
    return json.loads(next(line for line in out.splitlines() if line.startswith("{")))


def openflamingo(preset: str, python: str, script: str, of_root: str) -> dict:
    cmd = [
        python, script, "--of-root", of_root, "--config", preset, "--lm", "llama", "--steps",
        str(PEER_STEPS[preset])
    ]
    timed = os.path.exists("/usr/bin/time")
    if timed:
        cmd = ["/usr/bin/time", "-f", "FJ_MAXRSS_KB=%M"] + cmd
    proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
    text = proc.stdout + proc.stderr
    step = re.search(r"train step median \(excl\. first\) = ([0-9.]+) ms", text)
    if step is None:
        raise RuntimeError(f"no step time in the peer's output:\n{text[-3000:]}")
    rss = re.search(r"FJ_MAXRSS_KB=(\d+)", text) if timed else None
    trainable = re.search(r"trainable=([0-9,]+)", text)
    # fp32 params + AdamW's two moments for what OpenFlamingo trains (its whole input embedding is trainable).
    state = 12 * int(trainable.group(1).replace(",", "")) if trainable else None
    return dict(benchmark="openflamingo", preset=preset, step_ms_median=float(step.group(1)),
                peak_rss_mb=round(int(rss.group(1)) / 1024, 1) if rss else None, state_bytes=state)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--presets", default="tiny,small,wide")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--peer-python", default=os.path.join(PEER_DIR, "venv", "bin", "python"))
    ap.add_argument("--peer-script", default=os.path.join(HERE, "..", "..", "shared", "peer", "tiny_of.py"))
    args = ap.parse_args()
    with open(os.path.join(PEER_DIR, "of_root")) as f:
        of_root = f.read().strip()
    presets = args.presets.split(",")
    runs: dict[str, list[tuple[dict, dict]]] = {p: [] for p in presets}
    for r in range(args.rounds):
        for p in presets:
            pair = {}
            for who in (("ours", "of") if r % 2 == 0 else ("of", "ours")):
                res = ours(p) if who == "ours" else openflamingo(p, args.peer_python, args.peer_script, of_root)
                pair[who] = res
                print(json.dumps({"round": r + 1, **res}), flush=True)
            runs[p].append((pair["ours"], pair["of"]))
    summary = {}
    for p, pairs in runs.items():
        summary[p] = dict(
            ours_step_ms=round(statistics.median(o["step_ms_median"] for o, _ in pairs), 1),
            openflamingo_step_ms=round(statistics.median(f["step_ms_median"] for _, f in pairs), 1),
            ratio_median=round(statistics.median(o["step_ms_median"] / f["step_ms_median"] for o, f in pairs), 3),
            ratios=[round(o["step_ms_median"] / f["step_ms_median"], 3) for o, f in pairs],
            ours_mfu_median=round(statistics.median(o["mfu"] for o, _ in pairs), 3),
            ours_peak_rss_mb=max(o["peak_rss_mb"] for o, _ in pairs),
            openflamingo_peak_rss_mb=max((f["peak_rss_mb"] or 0) for _, f in pairs) or None,
            ours_state_bytes=pairs[0][0]["state_bytes"],
            openflamingo_state_bytes=pairs[0][1]["state_bytes"],
        )
    print(json.dumps({"summary": summary, "rounds": args.rounds}))


if __name__ == "__main__":
    main()
