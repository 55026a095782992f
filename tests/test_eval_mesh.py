"""Evaluation on a mesh: 8 simulated CPU devices (fsdp=4, model=2), params placed straight into their
shardings, decoding jitted with explicit shardings, under JAX_TRANSFER_GUARD=disallow, gives the scores and
predictions of one device on every world task at 0 and 4 shots (and RICES selection, ranking of one candidate
list and of each prompt's own candidates, and greedy and beam generation without stop tokens: the untrained
model's answers are empty, so the token-level check is the one with teeth)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_mesh_evaluation_equals_one_device_under_the_transfer_guard():
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu", JAX_TRANSFER_GUARD="disallow")
    env["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=8"
    out = subprocess.run([sys.executable, str(ROOT / "tests" / "eval_mesh_worker.py"), "--shots", "0,4"], env=env,
                         cwd=ROOT, capture_output=True, text=True, timeout=1200)
    assert out.returncode == 0, out.stderr[-4000:]
    line = [l for l in out.stdout.splitlines() if l.startswith("EVAL ")][-1]
    runs = json.loads(line[len("EVAL "):])
    one, mesh = runs["one"], runs["mesh"]
    assert one["sharded_params"] == 0 and mesh["sharded_params"] > 0
    cells = [k for k in one if "/" in k]
    assert {c.split("/")[0] for c in cells} == {"captions", "knowledge_vqa", "video_captions", "video_qa", "vqa"}
    for cell in cells:
        assert mesh[cell]["predictions"] == one[cell]["predictions"], cell
        assert mesh[cell]["score"] == pytest.approx(one[cell]["score"], abs=1e-9), cell
    assert "data" in mesh["rank_sharding"] and "fsdp" in mesh["rank_sharding"]  # results stay batch-split
    np.testing.assert_allclose(mesh["rank"], one["rank"], rtol=1e-4, atol=1e-4)
    # each prompt its own candidates in one call (Decoder.rank_per_row) equals ranking each row's list on its own
    for run in (one, mesh):
        np.testing.assert_allclose(run["rank_per_row"], run["rank_row_at_a_time"], rtol=1e-5, atol=1e-5)
    assert "data" in mesh["rank_per_row_sharding"] and "fsdp" in mesh["rank_per_row_sharding"]
    np.testing.assert_allclose(mesh["rank_per_row"], one["rank_per_row"], rtol=1e-4, atol=1e-4)
    for beams in (1, 3):
        got, want = mesh[f"generate{beams}"], one[f"generate{beams}"]
        assert got["tokens"] == want["tokens"] and got["lengths"] == want["lengths"], beams
        np.testing.assert_allclose(got["scores"], want["scores"], rtol=1e-4, atol=1e-4)
