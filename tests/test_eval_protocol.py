"""The paper's evaluation protocol on the tiny world: video at 30 frames through the interpolated temporal
embeddings, close-ended ranking over a class list (chunked), prompt ensembling, zero-shot close-ended prompts
without text-only examples, the DEV protocol's carved splits."""

from __future__ import annotations

import ml_collections
import numpy as np
import pytest

from flamingo_jax import models
from flamingo_jax.data import eval_sets
from flamingo_jax.evaluation import harness, prompts
from flamingo_jax.models import resampler
import tiny

from test_eval_harness import _MemesData


@pytest.fixture(scope="module")
def world():
    model_cfg, data, vocab, _, params = tiny.world_eval_model()  # resampler max_frames = 4
    config = ml_collections.ConfigDict(dict(model=model_cfg, data=data, seed=0))
    return config, params, vocab


def _evaluator(config, params, data, **kw):
    kw = dict(dict(batch_size=2, num_beams=1, progress=False), **kw)
    return harness.Evaluator(models.build(config.model), params, data, **kw)


def test_video_eval_at_30_frames_runs_through_the_linear_interpolation(world, monkeypatch):
    config, params, vocab = world
    data_cfg = ml_collections.ConfigDict(config.data.to_dict())
    data_cfg.eval_sets.video_qa.frames = eval_sets.VIDEO_FRAMES  # the paper's 30 frames at 3 FPS
    assert (data_cfg.eval_sets.video_qa.frames, data_cfg.eval_sets.video_qa.fps) == (30, 3.0)
    data = harness.EvalData(data_cfg, vocab=vocab)
    rec = data.source("video_qa", "query")[0]
    assert len(rec["frames"]) == 30 and rec["fps"] == 3.0  # the world renders eval clips long enough
    assert data.media("video_qa", rec).shape[0] == 30
    calls = []
    original = resampler.interpolate_rows

    def spy(table, n):
        calls.append((table.shape[0], n))
        return original(table, n)

    monkeypatch.setattr(resampler, "interpolate_rows", spy)
    outs = _evaluator(config, params, data, batch_size=3).predict("video_qa", shots=1, seed=0, max_queries=2)
    assert len(outs) == 2 and all(isinstance(o["prediction"], str) for o in outs)
    assert (4, 30) in calls  # 4 learnt temporal embeddings stretched to 30 frames
    # The paper's rule: row i sits at position i * (T - 1) / (n - 1) of the learnt table, linearly interpolated.
    table = np.asarray(params["resampler"]["time_embeddings"], np.float64)
    pos = np.linspace(0, table.shape[0] - 1, 30)
    expected = np.stack([np.interp(pos, np.arange(table.shape[0]), table[:, d]) for d in range(table.shape[1])], 1)
    np.testing.assert_allclose(np.asarray(original(params["resampler"]["time_embeddings"], 30)), expected, rtol=1e-5,
                               atol=1e-6)


def test_class_list_ranking_chunks_and_ensembling_on_creature_kind(world):
    config, params, vocab = world
    data = harness.EvalData(config.data, vocab=vocab)
    assert data.resolve("creature_kind") == "creature_kind" and data.metric("creature_kind") == "accuracy"
    classes = data.class_names("creature_kind")
    assert len(classes) == 12 and len(set(classes)) == 12
    whole = _evaluator(config, params, data, rank_chunk=64)
    chunked = _evaluator(config, params, data, rank_chunk=5)  # 12 classes in calls of 5 (the last padded)
    recs = [data.source("creature_kind", "query")[i] for i in (0, 1)]
    pool = data.source("creature_kind", "support")
    sup = [[3, 5], [7, 2]]
    args = ("creature_kind", "image_classification", 2, 0, [0, 1], recs, pool, {}, classes, sup)
    ll_whole = whole._rank("image_classification", *whole._inputs(*args), recs, classes)
    ll_chunk = chunked._rank("image_classification", *chunked._inputs(*args), recs, classes)
    assert np.shape(ll_whole) == (2, 12)
    np.testing.assert_allclose(ll_whole, ll_chunk, rtol=1e-5, atol=1e-5)
    outs = chunked.predict("creature_kind", shots=2, seed=0, max_queries=4)
    assert all(o["prediction"] == classes[o["choice"]] for o in outs)
    assert 0.0 <= chunked.score("creature_kind", outs) <= 1.0


def test_kinetics_style_video_classification_on_action_kind(world):
    config, params, vocab = world
    data_cfg = ml_collections.ConfigDict(config.data.to_dict())
    data_cfg.eval_sets.action_kind = eval_sets.world_extra_eval_sets().action_kind
    data_cfg.eval_sets.action_kind.frames = 4  # the 30-frame path is tested above; keep this one quick
    data = harness.EvalData(data_cfg, vocab=vocab)
    classes = data.class_names("action_kind")
    assert classes[:2] == ["moves to the left", "moves to the right"] and len(classes) == 6
    rec = data.source("action_kind", "query")[0]
    assert len(rec["frames"]) == 30 and classes[rec["label"]]  # an evaluation-length clip and its action
    ev = _evaluator(config, params, data)
    outs = ev.predict("action_kind", shots=1, seed=0, max_queries=2)
    assert all(o["prediction"] == classes[o["choice"]] for o in outs)
    assert 0.0 <= ev.score("action_kind", outs) <= 1.0


def test_prompt_ensembling_averages_log_likelihoods_over_shot_orders(world):
    config, params, vocab = world
    data = _MemesData(config, vocab)
    single = _evaluator(config, params, data)
    ens = _evaluator(config, params, data, ensemble=3)
    outs = ens.predict("memes", shots=3, seed=0, max_queries=2)
    pool, queries = data.source("memes", "support"), data.source("memes", "query")
    chosen = single._choose("memes", 3, 0, "random", [0, 1], [queries[0], queries[1]], len(pool))
    per_order = []
    for e in range(3):
        orders = [prompts.shot_orders(3, 3, 0, q)[e] for q in (0, 1)]
        permuted = [[sup[i] for i in o] for sup, o in zip(chosen, orders)]
        args = ("memes", "classification", 3, 0, [0, 1], [queries[0], queries[1]], pool, {}, None, permuted)
        per_order.append(
            np.array(single._rank("classification", *single._inputs(*args), [queries[0], queries[1]], None)))
    assert prompts.shot_orders(3, 3, 0, 0)[0] == [
        0, 1, 2
    ] and len({tuple(o)
               for o in prompts.shot_orders(5, 6, 0, 0)}) > 1  # the drawn order first, then random permutations
    mean = np.mean(per_order, axis=0)
    np.testing.assert_allclose([o["score"] for o in outs], mean[:, 1] - mean[:, 0], rtol=1e-5, atol=1e-5)
    assert not np.allclose(per_order[0], per_order[1])  # the orders do change the prompt
    plain = single.predict("memes", shots=3, seed=0, max_queries=2)
    np.testing.assert_allclose([o["score"] for o in plain], per_order[0][:, 1] - per_order[0][:, 0], rtol=1e-5,
                               atol=1e-5)


def test_zero_shot_close_ended_prompts_have_no_text_only_examples(world):
    config, params, vocab = world
    ev = _evaluator(config, params, _MemesData(config, vocab))
    assert ev._choose("memes", 0, 0, "random", [0, 1], [{}, {}], 6) == [[], []]
    open_ended = _evaluator(config, params, harness.EvalData(config.data, vocab=vocab))
    assert [len(c) for c in open_ended._choose("vqa", 0, 0, "random", [0], [{}], 8)] == [2]  # open-ended keep two
    assert prompts.text_only_shots("classification", 0) == 0 and prompts.text_only_shots("captions", 0) == 2
    outs = ev.predict("memes", shots=0, seed=0, max_queries=2)
    assert len(outs) == 2 and all(np.isfinite(o["score"]) for o in outs)


def test_dev_protocol_carves_disjoint_support_and_queries_from_train():
    train = [dict(id=f"t{i}") for i in range(5000)]
    q = eval_sets.dev_split(train, "dev_query", queries=1024)
    s = eval_sets.dev_split(train, "dev_support", queries=1024)
    assert (len(q), len(s)) == (1024, 2048)
    ids_q, ids_s = {q[i]["id"] for i in range(len(q))}, {s[i]["id"] for i in range(len(s))}
    assert not ids_q & ids_s
    assert len(eval_sets.dev_split(train, "dev_query", queries=5000)) == 2500  # at most half of a small train
    sets = eval_sets.dev_protocol(eval_sets.real_eval_sets())
    assert sets.coco.dev_queries == 5000 and sets.vqav2.dev_queries == 1024
    assert {(e.support, e.query) for e in sets.values()} == {("dev_support", "dev_query"), ("", "test")}  # RareAct


def test_heldout_prompt_layouts():
    from test_eval_harness import _Vocab

    v = _Vocab()
    dialog = dict(caption="a car", history_questions=["is it red"], history_answers=["yes"], question="how many",
                  options=["one", "two"], answer_index=1)
    assert prompts.query_text("dialog",
                              dialog) == "Caption: a car. Question: is it red? Answer: yes. Question: how many? Answer:"
    assert prompts.example_text("dialog", dialog, np.random.default_rng(0)).endswith("Answer: two")
    choice = dict(question="What next?", options=["Sit.", "Eat."], answer_index=0)
    assert prompts.example_text("video_choice", choice, np.random.default_rng(0)) == "Question: What next? Answer: Sit."
    assert prompts.example_text("image_classification", dict(label=1), np.random.default_rng(0),
                                ["vog", "tum"]) == "Output: tum"
    assert prompts.support_answer("video_retrieval", dict(verb="cut", noun="laptop"), None) == "cut laptop"
    assert prompts.candidate_tokens(v, "video_choice", ["Sit."]) == [v.encode(" Sit.") + [v.eoc_id]]


@pytest.mark.parametrize("task,shots", [("visdial", 1), ("rareact", 0), ("star", 1), ("ivqa", 1)])
def test_heldout_benchmarks_end_to_end_on_their_dummy_data(world, tmp_path, task, shots):
    """Each new kind's path on its builder's dummy files: prompts, ranking (per-query options, the class list)
    or generation, and its metric."""
    from flamingo_jax.data import builders

    config, params, vocab = world
    data_cfg = ml_collections.ConfigDict(config.data.to_dict())
    data_cfg.source, data_cfg.data_dir = "tfds", str(tmp_path)
    entry = eval_sets.real_eval_sets()[task]
    entry.manual_dir = str(builders.builder_module(entry.builder).__path__[0] + "/dummy_data")
    if entry.kind.startswith("video"):
        entry.frames = 4  # the tiny model's temporal table; the 30-frame path is tested above
    data_cfg.eval_sets = ml_collections.ConfigDict({task: entry})
    data = harness.EvalData(data_cfg, vocab=vocab)
    ev = _evaluator(config, params, data)
    outs = ev.predict(task, shots=shots, seed=0, max_queries=6)
    score = ev.score(task, outs)
    assert 0.0 <= score <= 1.0, score
    if task == "visdial":
        assert all(len(o["scores"]) == 100 for o in outs)  # every option ranked
    if task == "rareact":
        assert data.class_names(task) == ["cut laptop", "cut bread", "wash laptop"]
        assert len(outs) == 6 and all(len(o["scores"]) == 3 for o in outs)
        with pytest.raises(ValueError, match="zero-shot only"):  # no support pool to draw shots from
            ev.predict(task, shots=1, seed=0, max_queries=2)
    if task == "star":
        assert all(o["prediction"] == data.source(task, "query")[o["index"]]["options"][o["choice"]] for o in outs)


def test_evaluate_ensemble_cells_are_rows_of_their_own(world, tmp_path):
    import json

    from flamingo_jax import evaluate

    config, params, vocab = world
    kw = dict(params=params, checkpoint_id="test", batch_size=2, num_beams=1, max_queries=2, progress=False,
              vocab=vocab)
    plain = evaluate.evaluate(config, str(tmp_path), ["creature_kind", "vqa"], [1], **kw)
    ens = evaluate.evaluate(config, str(tmp_path), ["creature_kind", "vqa"], [1], ensemble=2, **kw)
    cells = json.loads((tmp_path / "eval" / "results.json").read_text())["cells"]
    labels = sorted((c["task"], c["selection"], c["metric"]) for c in cells.values())
    # the open-ended cell is shared; the close-ended one is evaluated again, ensembled, under its own label
    assert labels == [("creature_kind", "random", "accuracy"), ("creature_kind", "random-ensemble2", "accuracy"),
                      ("vqa", "random", "vqa_accuracy")]
    assert set(plain) == set(ens) == {"creature_kind", "vqa"} and ens["vqa"] == plain["vqa"]
