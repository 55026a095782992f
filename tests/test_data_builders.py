"""TFDS builder tests on dummy data (tfds.testing.DatasetBuilderTestCase) for every builder in data/.

The generated world is tested through its tiny-* configs (grouped by identical split sizes).
"""

import pytest
import tensorflow_datasets as tfds

from flamingo_jax.data import builders
from flamingo_jax.data.world import generate

_WORLD = builders.builder_class("flamingo_world")


class FlamingoWorldLargeTrainTest(tfds.testing.DatasetBuilderTestCase):
    DATASET_CLASS = _WORLD
    BUILDER_CONFIG_NAMES_TO_TEST = ["tiny-alt_text", "tiny-text", "tiny-clip_pairs"]
    SPLITS = {"train": 80}


class FlamingoWorldTrainTest(tfds.testing.DatasetBuilderTestCase):
    DATASET_CLASS = _WORLD
    BUILDER_CONFIG_NAMES_TO_TEST = ["tiny-interleaved", "tiny-long_text"]
    SPLITS = {"train": 40}


class FlamingoWorldVideoTrainTest(tfds.testing.DatasetBuilderTestCase):
    DATASET_CLASS = _WORLD
    BUILDER_CONFIG_NAMES_TO_TEST = ["tiny-video_text"]
    SPLITS = {"train": 20}


class FlamingoWorldImageEvalTest(tfds.testing.DatasetBuilderTestCase):
    DATASET_CLASS = _WORLD
    BUILDER_CONFIG_NAMES_TO_TEST = ["tiny-captions", "tiny-vqa", "tiny-knowledge_vqa", "tiny-creature_kind"]
    SPLITS = {"train": 8, "test": 4}


class FlamingoWorldVideoEvalTest(tfds.testing.DatasetBuilderTestCase):
    DATASET_CLASS = _WORLD
    BUILDER_CONFIG_NAMES_TO_TEST = ["tiny-video_qa", "tiny-video_captions", "tiny-action_kind"]
    SPLITS = {"train": 4, "test": 2}


def test_world_builder_array_record_matches_generator(tmp_path):
    """The prepared array_record source holds exactly the generated records (random access, by id)."""
    src = builders.data_source("flamingo_world", "tiny-vqa", "test", data_dir=str(tmp_path))
    world = generate.World(_WORLD.builder_configs["tiny-vqa"].world)
    by_id = {src[i]["id"]: src[i] for i in range(len(src))}
    assert len(by_id) == world.config.num_records("vqa", "test")
    for i in range(len(by_id)):
        expected = world.record("vqa", "test", i)
        got = by_id[expected["id"]]
        assert got["image"] == expected["image"] and got["answers"] == expected["answers"]
        assert got["question"] == expected["question"]


def test_world_builder_keeps_episode_styles(tmp_path):
    """A world with episode_styles prepares through TFDS with its records' style fields, read back as generated."""
    import dataclasses

    from flamingo_jax.data.schema import normalize

    world_cfg = dataclasses.replace(_WORLD.builder_configs["tiny-vqa"].world, episode_styles=True)
    cfg = builders.builder_module("flamingo_world").make_config("vqa", world_cfg)
    src = builders.data_source("flamingo_world", cfg, "test", data_dir=str(tmp_path))
    world = generate.World(world_cfg)
    got = {r["id"]: r for r in (normalize(src[i]) for i in range(len(src)))}
    for i in range(len(got)):
        expected = world.record("vqa", "test", i)
        assert {k: got[expected["id"]][k]
                for k in ("style", "styled", "answers")} == {k: expected[k]
                                                             for k in ("style", "styled", "answers")}


# ---- real-file builders: dummy_data/ holds each dataset's official layout in miniature --------------


def _case(name, splits, configs=None):
    attrs = {"DATASET_CLASS": builders.builder_class(name), "SPLITS": splits}
    if configs:
        attrs["BUILDER_CONFIG_NAMES_TO_TEST"] = configs
    return type(f'{name.title().replace("_", "")}Test', (tfds.testing.DatasetBuilderTestCase, ), attrs)


# The real-file builders skip at preparation what cannot train (common.FileBuilder): interleaved_generic's doc2,
# mmc4's never-downloaded page, the pairs' corrupt jpeg and the clip without frames are not written.
InterleavedGenericTest = _case("interleaved_generic", {"train": 2, "validation": 1})
Mmc4Test = _case("mmc4", {"train": 3}, ["all", "sim024"])
ImageTextPairsTest = _case("image_text_pairs", {"train": 4, "validation": 1})
VideoTextFramesTest = _case("video_text_frames", {"train": 2, "validation": 1})
CocoKarpathyTest = _case("coco_karpathy", {"train": 3, "val": 1, "test": 1})
Flickr30kTest = _case("flickr30k", {"train": 1, "val": 1, "test": 1})
Vqav2Test = _case("vqav2", {"train": 3, "validation": 2})
OkvqaTest = _case("okvqa", {"train": 2, "validation": 1})
VizwizTest = _case("vizwiz", {"train": 2, "validation": 1})
TextvqaTest = _case("textvqa", {"train": 2, "validation": 1})
HatefulMemesTest = _case("hateful_memes", {"train": 3, "dev_seen": 2})
MsvdQaTest = _case("msvd_qa", {"train": 3, "validation": 1, "test": 1})
VatexTest = _case("vatex", {"train": 2, "validation": 1})
VisdialTest = _case("visdial", {"train": 2, "validation": 2})
Youcook2Test = _case("youcook2", {"train": 2, "validation": 1})
MsrvttQaTest = _case("msrvtt_qa", {"train": 2, "validation": 1, "test": 1})
IvqaTest = _case("ivqa", {"train": 2, "validation": 1, "test": 1})
RareactTest = _case("rareact", {"test": 6})
NextqaTest = _case("nextqa", {"train": 2, "validation": 1, "test": 1})
StarTest = _case("star", {"train": 2, "validation": 1})


def _records(name, split, tmp_path, config=None):
    src = builders.data_source(name, config, split, data_dir=str(tmp_path),
                               manual_dir=str(builders.builder_module(name).__path__[0] + "/dummy_data"))
    return {r["id"]: r for r in (src[i] for i in range(len(src)))}


def test_mmc4_places_images_before_matched_sentence_and_filters_by_similarity(tmp_path):
    docs = _records("mmc4", "train", tmp_path, "all")
    first = docs["docs_shard_0_v2-0"]
    assert first["texts"][1] == "Second sentence about a boat." and first["image_positions"] == [0, 1]
    assert "docs_shard_0_v2-2" not in docs  # its one image was never downloaded: skipped and reported
    report = builders.read_report(builders.get_builder("mmc4", "all", str(tmp_path)))
    assert report["splits"]["train"] == {"written": 3, "skipped/missing_image": 1, "image_removed/missing_image": 1}
    assert docs["docs_shard_1_v2-0"]["texts"][0] == "A zipped shard."  # released .jsonl.zip shards read too
    strict = _records("mmc4", "train", tmp_path / "strict", "sim024")
    assert strict["docs_shard_0_v2-0"]["image_positions"] == [1]  # the 0.2-similarity image is left out


def test_pairs_from_folders_and_tars_skip_bad_bytes_and_report_them(tmp_path):
    pairs = _records("image_text_pairs", "train", tmp_path)
    assert pairs["shard-00000/000001"]["text"] == "tar caption 1"
    assert "00000/000000002" not in pairs  # b'this is not a jpeg': skipped when prepared, and counted
    report = builders.read_report(builders.get_builder("image_text_pairs", None, str(tmp_path)))
    assert report["splits"]["train"] == {"written": 4, "skipped/undecodable_image": 1}


def test_vqa_joins_questions_and_ten_answers(tmp_path):
    qs = _records("vqav2", "train", tmp_path)
    assert qs["90"]["question"] == "What color is the bus?" and qs["90"]["answers"] == ["red"] * 10
    assert qs["90"]["image"][:2] == b"\xff\xd8"  # the COCO jpeg found by image id


def test_karpathy_train_includes_restval_and_video_frames_are_ordered(tmp_path):
    coco = _records("coco_karpathy", "train", tmp_path)
    assert len(coco) == 3 and all(len(r["captions"]) == 5 for r in coco.values())
    clips = _records("video_text_frames", "train", tmp_path / "v")
    assert len(clips["clip_a"]["frames"]) == 4 and clips["clip_a"]["fps"] == 2.0
    assert "clip_missing" not in clips  # no frame folder: skipped as no_frames when prepared


def test_missing_manual_files_name_the_fix(tmp_path):
    manual = tmp_path / "manual"
    manual.mkdir()
    with pytest.raises(AssertionError, match="v2_OpenEnded_mscoco_"):  # empty: TFDS shows our layout doc
        builders.prepare("vqav2", data_dir=str(tmp_path / "d"), manual_dir=str(manual))
    (manual / "unrelated.txt").write_text("x")
    with pytest.raises(FileNotFoundError, match="v2_OpenEnded_mscoco_train2014_questions.json not found"):
        builders.prepare("vqav2", data_dir=str(tmp_path / "d"), manual_dir=str(manual))
    with pytest.raises(ValueError, match="unknown dataset builder"):
        builders.builder_class("coco")


def test_heldout_builders_read_their_layouts(tmp_path):
    """The seven held-out benchmarks' records as their official files lay them out."""
    dialog = _records("visdial", "validation", tmp_path / "vd")
    rnd = dialog["185565_2"]  # the densely annotated round, with the round before it as history
    assert rnd["history_questions"] == ["is it sunny"] and rnd["history_answers"] == ["yes"]
    assert rnd["question"] == "how many people are there" and len(rnd["options"]) == 100
    assert rnd["options"][rnd["answer_index"]] == "two" and rnd["relevance"][:2] == [1.0, 0.5]
    assert dialog["284024_2"]["relevance"] == []  # not densely annotated: its last round, no relevance
    assert _records("visdial", "train", tmp_path / "vt")["9_1"]["image"][:2] == b"\xff\xd8"
    cook = _records("youcook2", "train", tmp_path / "yc")
    assert cook["GLd3aX16zBg_1"]["captions"] == ["place a slice of cheese on the bread"]
    assert len(cook["GLd3aX16zBg_0"]["frames"]) == 3 and len(cook["GLd3aX16zBg_1"]["frames"]) == 4  # [0,3), [3,7) s
    ivqa = _records("ivqa", "train", tmp_path / "iv")
    (first, ) = [r for k, r in ivqa.items() if k.startswith("5sKmRk8o7YE")]
    assert first["answers"] == ["onion", "onion", "onions", "onion", "carrot"] and len(first["frames"]) == 4
    rare = _records("rareact", "test", tmp_path / "ra")
    assert [rare[str(i)]["annotation"] for i in range(6)] == [1, 1, 0, 1, 2, 1]
    assert rare["5"]["verb"] == "wash" and rare["5"]["class_id"] == 2 and len(rare["5"]["frames"]) == 3
    nxt = _records("nextqa", "validation", tmp_path / "nq")["3233088823_3"]
    assert nxt["answers"] == ["from the drivers cabin"] and nxt["question_type"] == "CH" and len(nxt["frames"]) == 5
    star = _records("star", "train", tmp_path / "st")["Interaction_T1_13"]
    assert star["options"][star["answer_index"]] == "The clothes." and star["question_type"] == "Interaction"
    assert _records("msrvtt_qa", "test", tmp_path / "mq")["3"]["answers"] == ["car"]


def test_records_round_trip_the_files_make_dummy_data_wrote(tmp_path):
    """Field values read back from the prepared builders equal those in the dummy files (text, labels, captions
    and the image bytes themselves), not just the split sizes."""
    import json
    from pathlib import Path

    root = Path(builders.builder_module("hateful_memes").__path__[0]).parent
    memes = _records("hateful_memes", "dev_seen", tmp_path / "hm")
    written = [json.loads(line) for line in (root / "hateful_memes/dummy_data/dev_seen.jsonl").read_text().splitlines()]
    assert len(memes) == len(written) == 2
    for w in written:
        got = memes[str(w["id"])]
        assert (got["text"], got["label"]) == (w["text"], w["label"])
        assert got["image"] == (root / "hateful_memes/dummy_data" / w["img"]).read_bytes()
    coco = _records("coco_karpathy", "test", tmp_path / "ck")
    (w, ) = [
        im for im in json.loads((root / "coco_karpathy/dummy_data/dataset_coco.json").read_text())["images"]
        if im["split"] == "test"
    ]
    (got, ) = coco.values()
    assert got["captions"] == [s["raw"] for s in w["sentences"]]
    assert got["image"] == (root / "coco_karpathy/dummy_data" / w["filepath"] / w["filename"]).read_bytes()
