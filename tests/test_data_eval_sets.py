"""Evaluation-set access, the preview command, and the pipeline on a real-file builder's dummy data."""

import os

import pytest

from flamingo_jax.data import builders, eval_sets, mixture, preview
from flamingo_jax.data.testing import tiny_config, tiny_vocab


@pytest.mark.parametrize("name", ["captions", "vqa", "knowledge_vqa", "video_qa", "video_captions"])
def test_world_eval_sets_support_and_query(name):
    cfg = tiny_config()
    support, query = eval_sets.eval_source(cfg, name, "support"), eval_sets.eval_source(cfg, name, "query")
    assert len(support) > len(query) > 0
    assert support[0]["id"].endswith("train-0") and query[0]["id"].endswith("test-0")
    media = eval_sets.record_media(cfg, name, query[0])
    frames = cfg.eval_sets[name].frames
    assert media.shape == (1, frames, cfg.image_size, cfg.image_size, 3) and 0 <= media.min() <= media.max() <= 1


def test_real_eval_set_from_dummy_official_files():
    cfg = tiny_config(source="tfds",
                      manual_dir=os.path.join(builders.builder_module("okvqa").__path__[0], "dummy_data"))
    cfg.eval_sets = eval_sets.real_eval_sets()
    query = eval_sets.eval_source(cfg, "okvqa", "query")
    assert len(query) == 1 and query[0]["answers"][0] == "edison"
    assert eval_sets.record_media(cfg, "okvqa", query[0]).shape == (1, 1, 32, 32, 3)


def _train_report(cfg, name: str) -> dict:
    d = cfg.datasets[name]
    return builders.read_report(builders.get_builder(d.builder, d.builder_config or None,
                                                     cfg.data_dir))["splits"]["train"]


def test_training_on_real_pairs_skips_and_counts_the_corrupt_image_at_preparation():
    cfg = tiny_config(source="tfds", num_threads=1,
                      manual_dir=os.path.join(builders.builder_module("image_text_pairs").__path__[0], "dummy_data"))
    cfg.datasets.align.builder, cfg.datasets.align.builder_config = "image_text_pairs", ""
    it = mixture.make_mixture_iterator(cfg, names=["align"], vocab=tiny_vocab())
    for _ in range(5):  # 10 examples from the 4 good records: each is read at least twice
        b = next(it)["align"]
    assert b["image_mask"].all()
    # the dummy pairs' one undecodable image is skipped (and counted) when the builder prepares, not in training
    assert _train_report(cfg, "align") == {"skipped/undecodable_image": 1, "written": 4}
    m = it.metrics()
    assert m["data/align/records"] >= 10 and not any(v for k, v in m.items() if k.startswith("data/align/dropped/"))


def test_preview_prints_examples_and_writes_png(tmp_path):
    cfg_file = tmp_path / "cfg.py"
    cfg_file.write_text('import ml_collections\n'
                        'from flamingo_jax.data.testing import tiny_config\n'
                        'def get_config(arg=None):\n'
                        '  return ml_collections.ConfigDict({"data": tiny_config()})\n')
    text, image = preview.preview(preview.load_config(str(cfg_file)), n=1, out_dir=str(tmp_path / "out"),
                                  with_eval=True)
    for name in tiny_config().mixture:
        assert f"[{name} #0]" in text
    assert "<image>" in text and "|1|+" in text and "knowledge_v #0: Question:" in text
    assert (tmp_path / "out" / "samples.png").stat().st_size > 1000 and image.size[1] > 4 * 64


def test_paper_mixture_on_real_file_builders(tmp_path):
    """real_data_config wired to the builders' dummy official layouts: every dataset yields batches."""
    from flamingo_jax.data import config as config_lib

    cfg = config_lib.real_data_config(manual_dir=str(tmp_path / "manual"), data_dir=str(tmp_path / "tfds"))
    dummy = lambda b: os.path.join(builders.builder_module(b).__path__[0], "dummy_data")  # noqa: E731
    for name, builder in (("m3w", "mmc4"), ("align", "image_text_pairs"), ("ltip", "image_text_pairs"),
                          ("vtp", "video_text_frames")):
        cfg.datasets[name].manual_dir = dummy(builder)
        cfg.datasets[name].batch_size = 2
    cfg.image_size, cfg.num_threads = 32, 1
    it = mixture.make_mixture_iterator(cfg, vocab=tiny_vocab())
    for _ in range(3):
        batch = next(it)
    assert batch["m3w"]["images"].shape == (2, 5, 1, 32, 32, 3) and batch["vtp"]["images"].shape[2] == 8
    # the dummy layouts' bad records are skipped and counted when each builder prepares (prepare_report.json)
    assert _train_report(cfg, "m3w") == {"image_removed/missing_image": 1, "skipped/missing_image": 1, "written": 3}
    assert _train_report(cfg, "vtp") == {"skipped/no_frames": 1, "written": 2}
    assert _train_report(cfg, "align") == _train_report(cfg, "ltip") == {"skipped/undecodable_image": 1, "written": 4}
    assert (tmp_path / "tfds" / "image_text_pairs" / "align").is_dir()  # align and ltip prepared apart
