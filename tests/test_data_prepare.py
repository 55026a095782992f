"""Preparation of the formats researchers hold: WebDataset MMC4 and LAION-style shards, OBELICS-style
parquet, hostile manual dirs. Every planted corruption is skipped or repaired and counted exactly by reason;
none stops the build. Also the prepare command and grain worker processes on a prepared corpus."""

import json
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

from flamingo_jax.data import builders, fake_corpora, mixture, prepare
from flamingo_jax.data.testing import tiny_config, tiny_vocab

ROOT = Path(__file__).resolve().parents[1]


def _report(name, config, data_dir):
    return builders.read_report(builders.get_builder(name, config, str(data_dir)))["splits"]["train"]


def _records(name, config, data_dir, manual_dir):
    src = builders.data_source(name, config, "train", str(data_dir), str(manual_dir))
    return {r["id"]: r for r in (src[i] for i in range(len(src)))}


@pytest.fixture(scope="module")
def mmc4_corpus(tmp_path_factory):
    """60 MMC4 documents in 4 WebDataset shards, 20% corrupt (each kind), the last shard cut mid-sample."""
    root = tmp_path_factory.mktemp("mmc4")
    expected = fake_corpora.write_mmc4_wds(root / "manual", 60, corrupt=0.2, docs_per_shard=16, image_size=24, seed=3)
    data_dir = root / "tfds"
    docs = _records("mmc4", "all", data_dir, root / "manual")
    return root, expected, docs


def test_mmc4_webdataset_shards_prepare_with_exact_counts_per_reason(mmc4_corpus):
    root, expected, docs = mmc4_corpus
    got = _report("mmc4", "all", root / "tfds")
    assert got == expected
    for reason in ("bad_json", "undecodable_image", "empty_image", "missing_image", "truncated_shard"):
        assert got[f"skipped/{reason}"] >= 1, reason  # every planted kind occurs, and is counted under its name
    assert got["image_removed/missing_image"] > got["skipped/missing_image"]  # some pages were repaired, kept
    assert len(docs) == got["written"]


def test_mmc4_webdataset_records_equal_their_json_and_images(mmc4_corpus):
    """Both OpenFlamingo layouts: base64 inside image_info (even documents) and images as sample members (odd)."""
    root, _, docs = mmc4_corpus
    with tarfile.open(root / "manual" / "shards" / "00000.tar") as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar}
    checked = set()
    for name, data in members.items():
        key = name.split(".")[0]
        if not name.endswith(".json") or f"00000/{key}" not in docs:
            continue
        doc, rec = json.loads(data), docs[f"00000/{key}"]
        assert rec["texts"] == doc["text_list"]
        infos = sorted([i for i in doc["image_info"] if "image_base64" in i or f'{key}.{i["image_name"]}' in members],
                       key=lambda i: i["matched_text_index"])
        want = [
            fake_corpora.base64.b64decode(i["image_base64"][2:-1])
            if "image_base64" in i else members[f'{key}.{i["image_name"]}'] for i in infos
        ]
        assert rec["images"] == want and rec["image_positions"] == [i["matched_text_index"] for i in infos]
        checked.add(int(key) % 2)
    assert checked == {0, 1}


def test_laion_pairs_and_obelics_parquet_prepare_with_exact_counts(tmp_path):
    expected = fake_corpora.write_laion_wds(tmp_path / "laion", 60, corrupt=0.2, pairs_per_shard=25, image_size=24)
    pairs = _records("image_text_pairs", None, tmp_path / "tfds", tmp_path / "laion")
    assert _report("image_text_pairs", None, tmp_path / "tfds") == expected
    assert all(r["text"] and r["image"][:2] == b"\xff\xd8" for r in pairs.values())

    expected = fake_corpora.write_obelics_parquet(tmp_path / "obelics", 12, image_size=24, missing_every=4)
    docs = _records("obelics", None, tmp_path / "tfds", tmp_path / "obelics")
    assert _report("obelics", None, tmp_path / "tfds") == expected
    import pyarrow.parquet as pq

    row = pq.read_table(tmp_path / "obelics" / "part-00000.parquet").to_pylist()[0]
    rec = docs["part-00000-doc0"]
    assert rec["texts"] == [t for t in row["texts"] if t]
    n_fetched = sum(1 for u in row["images"] if u and int(u.split("/")[-1][:-4]) % 4 != 3)
    assert len(rec["images"]) == len(rec["image_positions"]) == n_fetched


def test_hostile_manual_dirs_never_stop_the_build(tmp_path):
    """Inputs found in real manual dirs: a truncated tar, a COCO record without `sentences`, a bad jsonl line."""
    pairs_src = Path(builders.builder_module("image_text_pairs").__path__[0]) / "dummy_data"
    manual = tmp_path / "pairs"
    shutil.copytree(pairs_src, manual)
    tar = manual / "train" / "shard-00000.tar"
    tar.write_bytes(tar.read_bytes()[:1200])  # inside the first jpeg member
    _records("image_text_pairs", None, tmp_path / "tfds", manual)
    assert _report("image_text_pairs", None,
                   tmp_path / "tfds") == {"written": 2, "skipped/truncated_shard": 1, "skipped/undecodable_image": 1}

    coco_src = Path(builders.builder_module("coco_karpathy").__path__[0]) / "dummy_data"
    coco = tmp_path / "coco"
    shutil.copytree(coco_src, coco)
    data = json.loads((coco / "dataset_coco.json").read_text())
    del data["images"][0]["sentences"]
    (coco / "dataset_coco.json").write_text(json.dumps(data))
    assert len(_records("coco_karpathy", None, tmp_path / "tfds", coco)) == 2
    assert _report("coco_karpathy", None, tmp_path / "tfds") == {"written": 2, "skipped/no_captions": 1}

    generic_src = Path(builders.builder_module("interleaved_generic").__path__[0]) / "dummy_data"
    generic = tmp_path / "generic"
    shutil.copytree(generic_src, generic)
    with open(generic / "train.jsonl", "a") as f:
        f.write('{"id": "cut", "chunks": [{"text": \n')
    _records("interleaved_generic", None, tmp_path / "tfds", generic)
    assert _report("interleaved_generic", None, tmp_path / "tfds") == {
        "written": 2, "skipped/missing_image": 1, "skipped/bad_json": 1, "image_removed/missing_image": 1
    }


def _corpus_config(mmc4_root, laion_root, data_dir, workers=0):
    cfg = tiny_config(source="tfds", num_threads=1, num_workers=workers)
    cfg.data_dir = str(data_dir)
    cfg.datasets.m3w.update(dict(builder="mmc4", builder_config="all", manual_dir=str(mmc4_root)))
    cfg.datasets.align.update(dict(builder="image_text_pairs", builder_config="laion", manual_dir=str(laion_root)))
    cfg.mixture = ["m3w", "align"]
    return cfg


def test_prepare_command_reports_and_is_resumable(tmp_path, mmc4_corpus):
    root, expected, _ = mmc4_corpus
    fake_corpora.write_laion_wds(tmp_path / "laion", 30, corrupt=0.1, image_size=24)
    overrides = [
        "--config.data.source=tfds", f'--config.data.data_dir={tmp_path / "tfds"}',
        "--config.data.datasets.m3w.builder=mmc4", "--config.data.datasets.m3w.builder_config=all",
        f'--config.data.datasets.m3w.manual_dir={root / "manual"}',
        "--config.data.datasets.align.builder=image_text_pairs", "--config.data.datasets.align.builder_config=laion",
        f'--config.data.datasets.align.manual_dir={tmp_path / "laion"}'
    ]
    cmd = [
        sys.executable, "-m", "flamingo_jax.data.prepare", "--config", "experiments/tiny.py", "--datasets", "m3w,align",
        "--parallel", "2", "--report",
        str(tmp_path / "r.json"), *overrides
    ]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    reports = {r["dataset"]: r for r in json.loads((tmp_path / "r.json").read_text())}
    assert reports["m3w"]["splits"]["train"] == expected and reports["m3w"]["status"] == "prepared"
    assert reports["m3w"]["bytes"] > 0
    assert f"{expected['written']} written" in out.stdout and "truncated_shard" in out.stdout
    # a rerun prepares nothing and reports the same counts
    cfg = _corpus_config(root / "manual", tmp_path / "laion", tmp_path / "tfds")
    again = {r["dataset"]: r for r in prepare.prepare_all(cfg, ["m3w", "align"], parallel=1)}
    assert again["m3w"]["status"] == again["align"]["status"] == "already prepared"
    assert again["m3w"]["splits"] == reports["m3w"]["splits"]


def test_workers_give_the_threads_batches_and_resume_exactly(tmp_path, mmc4_corpus):
    """grain worker processes (config.data.num_workers) on the prepared WebDataset corpus: the same batches as
    threads, and a state saved with workers on restores exactly in a new iterator."""
    root, _, _ = mmc4_corpus
    fake_corpora.write_laion_wds(tmp_path / "laion", 30, corrupt=0.1, image_size=24)
    v = tiny_vocab()
    threads = mixture.make_mixture_iterator(_corpus_config(root / "manual", tmp_path / "laion", root / "tfds"), vocab=v)
    want = [next(threads) for _ in range(5)]
    cfg = _corpus_config(root / "manual", tmp_path / "laion", root / "tfds", workers=2)
    it = mixture.make_mixture_iterator(cfg, vocab=v)
    try:
        got = [next(it) for _ in range(2)]
        state = json.loads(json.dumps(it.get_state()))
    finally:
        it.close()
    resumed = mixture.make_mixture_iterator(cfg, vocab=v)
    try:
        resumed.set_state(state)
        got += [next(resumed) for _ in range(3)]
    finally:
        resumed.close()
    for a, b in zip(want, got):
        for n in a:
            for k in a[n]:
                np.testing.assert_array_equal(a[n][k], b[n][k], err_msg=f"{n}/{k}")
    with pytest.raises(ValueError, match="num_workers=2"):
        threads.set_state(state)
