"""The inference CLI (python -m flamingo_jax.infer) on a checkpoint written by a short training run of the tiny
config: it prints a caption for an image file given on the command line."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import tiny

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """experiments/tiny.py trained 1 step on synthetic m3w batches by the trainer (checkpoint + frozen store)."""
    from flamingo_jax import train

    workdir = tmp_path_factory.mktemp("infer") / "run"
    train.train(tiny.tiny_train_config(mixture=("m3w", ), total_steps=1), str(workdir))
    return workdir


def test_cli_prints_a_caption_for_an_image_file(run_dir, tmp_path):
    image = tmp_path / "photo.png"  # not square and not the model's size: resized and mean-padded as training
    Image.fromarray((np.random.default_rng(0).random((40, 30, 3)) * 255).astype(np.uint8)).save(image)
    env = dict(os.environ, PYTHONPATH=str(ROOT))

    def infer(prompt, *extra):
        cmd = [
            sys.executable, "-m", "flamingo_jax.infer", "--checkpoint",
            str(run_dir), "--images",
            str(image), "--prompt", prompt, "--data_dir",
            str(tmp_path / "data"), *extra
        ]
        return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)

    out = infer("<image>Output:", "--num_beams", "3", "--max_new_tokens", "5", "--min_new_tokens", "3", "--json")
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert 3 <= len(result["tokens"]) <= 5 and result["score"] < 0  # beam search ran from the checkpoint
    assert result["text"].strip()  # the caption: the generated tokens as text
    bad = infer("<image><image>Output:")
    assert bad.returncode == 1 and "2 <image> markers for 1 images" in bad.stderr
