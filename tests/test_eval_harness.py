"""Prompts, RICES and the harness end to end on the tiny world (cached cells, sharding-invariant outputs)."""

from __future__ import annotations

import json

import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from flamingo_jax import evaluate
from flamingo_jax.evaluation import harness, prompts, rices
import tiny


class _Vocab:
    """A character vocabulary: enough to check prompt layouts exactly."""
    bos_id, eos_id, pad_id, image_id, eoc_id = 1, 2, 0, 100, 101

    def encode(self, text):
        return [ord(c) % 90 + 3 for c in text]


def test_prompt_layouts():
    v = _Vocab()
    sup = [dict(captions=["a red cube."], id="s0"), dict(captions=["two dogs"], id="s1")]
    q = dict(captions=["x"], id="q")
    p = prompts.build_prompt(v, "captions", sup, [5, 7], q, text_only=False, seed=0, query_index=3)
    want = ([v.bos_id, v.image_id] + v.encode("Output: a red cube.") + [v.eoc_id, v.image_id] +
            v.encode("Output: two dogs") + [v.eoc_id, v.image_id] + v.encode("Output:"))
    assert p.tokens == want and p.support == [5, 7]
    z = prompts.build_prompt(v, "captions", sup, [5, 7], q, text_only=True, seed=0, query_index=3)
    assert z.tokens.count(v.image_id) == 1 and z.support == [] and z.text_only == [5, 7]
    assert z.tokens == [t for t in want if t != v.image_id][:-len(v.encode("Output:"))] + [v.image_id
                                                                                           ] + v.encode("Output:")
    qa = dict(question="What colour?", answers=["red", "blue", "red"])
    assert prompts.example_text("vqa", qa, np.random.default_rng(0)) == "Question: What colour? Answer: red"
    memes = dict(text="hello", label=1)
    assert prompts.example_text(
        "classification", memes,
        np.random.default_rng(0)) == ('is an image with written: "hello" on it. Is it hateful? Answer: yes')
    assert prompts.candidate_tokens(v, "classification")[1] == v.encode(" yes") + [v.eoc_id]
    assert prompts.postprocess("vqa", " red<EOC>Question: x") == "red"
    assert prompts.postprocess("captions", ' a "dog" Output: b') == "a dog"


def test_random_support_is_seeded_per_query_and_distinct():
    a = prompts.random_support(20, 8, seed=0, query_index=5)
    assert a == prompts.random_support(20, 8, seed=0, query_index=5) and len(set(a)) == 8
    assert a != prompts.random_support(20, 8, seed=1, query_index=5)
    assert a != prompts.random_support(20, 8, seed=0, query_index=6)
    assert a != sorted(a) or a != prompts.random_support(20, 8, seed=2, query_index=5)  # random order
    with pytest.raises(ValueError, match="support pool"):
        prompts.random_support(4, 8, seed=0, query_index=0)


def test_rices_selects_most_similar_last_and_caches(tmp_path):
    support = rices.normalize(np.eye(4))  # cosine with the query: 1.0, 0.5, 0.2, 0.0 (normalised)
    query = rices.normalize(np.array([[1.0, 0.5, 0.2, 0.0]]))
    sel = rices.select(support, query, 3)
    assert sel.tolist() == [[2, 1, 0]]  # most similar (0) last, right before the query
    calls = []

    def compute():
        calls.append(1)
        return np.ones((3, 4))

    key = dict(vision=rices.params_hash({"w": jnp.ones(3)}), data="x")
    f1 = rices.cached_features(str(tmp_path), key, compute)
    f2 = rices.cached_features(str(tmp_path), key, compute)
    assert len(calls) == 1 and np.allclose(f1, f2) and np.allclose(np.linalg.norm(f1, axis=1), 1)
    other = dict(key, vision=rices.params_hash({"w": jnp.zeros(3)}))
    rices.cached_features(str(tmp_path), other, compute)
    assert len(calls) == 2


@pytest.fixture(scope="module")
def world_model():
    model_cfg, data, vocab, _, params = tiny.world_eval_model()
    config = ml_collections.ConfigDict(dict(model=model_cfg, data=data, seed=0))
    return config, params, vocab


def test_evaluate_end_to_end_caches_cells_and_shards_agree(world_model, tmp_path, monkeypatch):
    config, params, vocab = world_model
    kw = dict(params=params, checkpoint_id="test", batch_size=2, num_beams=1, max_queries=3, progress=False,
              vocab=vocab)
    out = evaluate.evaluate(config, str(tmp_path), ["vqav2"], [2], **kw)  # DEV alias -> the world's 'vqa'
    assert set(out) == {"vqa"} and 0.0 <= out["vqa"][2] <= 1.0
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    (cell, ) = results["cells"].values()
    assert cell["queries"] == 3 and cell["metric"] == "vqa_accuracy"
    assert "| vqa | vqa_accuracy |" in (tmp_path / "eval" / "results.md").read_text()
    unsharded = json.loads(next((tmp_path / "eval" / "cells").glob("*/shard-0-of-1.json")).read_text())

    # A rerun skips the finished cell entirely.
    monkeypatch.setattr(harness.Evaluator, "predict", lambda *a, **k: pytest.fail("cached cell recomputed"))
    assert evaluate.evaluate(config, str(tmp_path), ["vqa"], [2], **kw) == out
    # ... but a run with other settings (more queries, another length penalty, another world: its queries
    # answer in a style drawn per episode) evaluates afresh, in a summary group of its own.
    styled = ml_collections.ConfigDict(config.to_dict())
    styled.data.world.episode_styles = True
    for other_config, other_kw in ((config, dict(kw, max_queries=4)), (config, dict(kw,
                                                                                    length_penalty=1.0)), (styled, kw)):
        calls = []
        monkeypatch.setattr(harness.Evaluator, "predict",
                            lambda self, *a, **k: calls.append(a) or [dict(id="x", index=0, prediction="no")])
        monkeypatch.setattr(harness.Evaluator, "score", lambda self, task, outs: 0.25)
        assert evaluate.evaluate(other_config, str(tmp_path), ["vqa"], [2], **other_kw) == {"vqa": {2: 0.25}}
        assert len(calls) == 1
    summary = json.loads((tmp_path / "eval" / "results.json").read_text())["summary"]
    plain_data, styled_data = (harness.EvalData(c.data, vocab=vocab).fingerprint() for c in (config, styled))
    assert plain_data != styled_data
    assert sorted(summary) == sorted(f"test/random/beams1-{s}"
                                     for s in (f"lp0-q3-d{plain_data}", f"lp0-q4-d{plain_data}",
                                               f"lp1-q3-d{plain_data}", f"lp0-q3-d{styled_data}"))
    monkeypatch.undo()

    # Two shards (as two processes would run them) give the same predictions and score.
    other = tmp_path / "sharded"
    for i in (1, 0):
        evaluate.evaluate(config, str(other), ["vqa"], [2], shard=(i, 2), wait_timeout_s=5, **kw)
    shards = sorted((other / "eval" / "cells").glob("*/shard-*-of-2.json"))
    merged = sorted((o for p in shards for o in json.loads(p.read_text())), key=lambda o: o["index"])
    assert merged == unsharded
    assert json.loads((other / "eval" / "results.json").read_text())["cells"].popitem()[1]["score"] == cell["score"]


def test_rices_and_zero_shot_prompts_on_the_world(world_model, tmp_path, monkeypatch):
    """RICES end to end: for every query of a cell, the support examples in its prompt are the pool's nearest by
    the cosine similarity of the vision tower's mean-pooled features, computed here independently (the tower
    applied directly, numpy normalisation and ranking), the most similar last, right before the query."""
    config, params, vocab = world_model
    data = harness.EvalData(config.data, vocab=vocab)
    import jax

    from flamingo_jax import models

    model = models.build(config.model)
    ev = harness.Evaluator(model, params, data, batch_size=2, num_beams=1, cache_dir=str(tmp_path), progress=False)
    shown = {}
    real_build = prompts.build_prompt

    def spy(vocab_, kind, records, support_ids, query, **kw):
        shown[kw["query_index"]] = list(support_ids)
        return real_build(vocab_, kind, records, support_ids, query, **kw)

    monkeypatch.setattr(harness.prompts, "build_prompt", spy)
    outs = ev.predict("vqa", shots=2, seed=0, selection="rices", max_queries=4)
    assert [o["index"] for o in outs] == [0, 1, 2, 3] and sorted(shown) == [0, 1, 2, 3]
    assert len(list(tmp_path.glob("rices_*.npz"))) == 1  # the pool's features, cached

    pool, queries = data.source("vqa", "support"), data.source("vqa", "query")
    tower = jax.jit(lambda p, x: model.apply({"params": p}, x, method=lambda m, x: m.vision(x)))

    def features(records):
        x = np.concatenate([data.media("vqa", r) for r in records])  # one frame per record: [N, S, S, 3]
        f = np.asarray(tower(params, x), np.float64).mean(axis=1)  # [N, tokens, D] -> [N, D]
        return f / np.linalg.norm(f, axis=1, keepdims=True)

    sims = features([queries[q] for q in range(4)]) @ features([pool[j] for j in range(len(pool))]).T
    for q in range(4):
        order = np.argsort(-sims[q])
        assert sims[q, order[1]] - sims[q, order[2]] > 1e-6, "a near tie: the check would be ambiguous"
        assert shown[q] == [int(order[1]), int(order[0])], (q, shown[q], order[:3])
    assert len({tuple(v) for v in shown.values()}) > 1  # the queries got different nearest neighbours

    zero = ev._choose("vqa", 0, 0, "random", [0], [queries[0]], len(pool))
    assert len(zero[0]) == 2  # zero-shot: two text-only examples


class _MemesData(harness.EvalData):
    """HatefulMemes-shaped records (classification) served from memory: the close-ended path."""

    def __init__(self, config, vocab):
        super().__init__(config.data, vocab=vocab)
        self.records = {
            s: [dict(id=f"m-{s}-{i}", text=f"meme {i}", label=i % 2) for i in range(6)]
            for s in ("support", "query")
        }

    def kind(self, task):
        return "classification"

    def frames(self, task):
        return 1

    def source(self, task, split):
        return self.records[split]

    def media(self, task, record):
        s = self.config.image_size
        return np.full((1, s, s, 3), int(record["id"][-1]) / 6.0, np.float32)


def _uncached_loglik(model, params, rows, images, image_mask, pad_id):
    """log-probs of teacher-forced rows (prompt + candidate, right-padded) from ONE uncached forward of the model:
    logp[r, t] = log p(token t + 1 | tokens <= t)."""
    import jax

    from flamingo_jax.evaluation import decoding

    length = decoding.bucket(max(map(len, rows)), 32)
    toks, tmask = decoding.right_pad(rows, length, pad_id)
    forward = jax.jit(lambda p, t, i, m, tm: jax.nn.log_softmax(
        model.apply({"params": p}, t, i, m, None, tm).astype(jnp.float32), -1))
    return np.asarray(forward(params, toks, images, image_mask, tmask))


def test_close_ended_ranking_gives_roc_auc(world_model):
    """HatefulMemes-style ranking: each query's score is ll(" yes<EOC>") - ll(" no<EOC>") after its 2-shot prompt,
    recomputed here from an uncached forward pass (the sum of the candidate tokens' log-probs); the prediction is
    the likelier class and the cell's metric is the ROC-AUC of those scores."""
    config, params, vocab = world_model
    from flamingo_jax import models
    from flamingo_jax.evaluation import metrics

    data = _MemesData(config, vocab)
    model = models.build(config.model)
    ev = harness.Evaluator(model, params, data, batch_size=2, progress=False)
    outs = ev.predict("memes", shots=2, seed=0, max_queries=4)
    assert [o["index"] for o in outs] == [0, 1, 2, 3]

    pool, queries = data.source("memes", "support"), data.source("memes", "query")
    cands = prompts.candidate_tokens(vocab, "classification")  # [" no<EOC>", " yes<EOC>"]
    rows, images, image_mask, spans = [], [], [], []
    for q in range(4):
        sup = prompts.random_support(len(pool), 2, 0, q)
        p = prompts.build_prompt(vocab, "classification", [pool[j] for j in sup], sup, queries[q], text_only=False,
                                 seed=0, query_index=q)
        media = np.stack([data.media("memes", r) for r in [pool[j] for j in sup] + [queries[q]]])  # [3, F, S, S, 3]
        for c in cands:
            rows.append(p.tokens + c)
            images.append(media)
            image_mask.append(np.ones(3, bool))
            spans.append((len(p.tokens), c))
    logp = _uncached_loglik(model, params, rows, np.stack(images), np.stack(image_mask), vocab.pad_id)
    ll = np.array([sum(logp[r, start - 1 + j, t] for j, t in enumerate(c)) for r, (start, c) in enumerate(spans)])
    ll = ll.reshape(4, 2)
    want = ll[:, 1] - ll[:, 0]
    assert np.ptp(want) > 1e-3  # the queries' scores differ: a constant or shuffled score would be caught
    np.testing.assert_allclose([o["score"] for o in outs], want, rtol=1e-4, atol=1e-4)
    assert [o["prediction"] for o in outs] == [prompts.CLASS_NAMES[int(np.argmax(x))] for x in ll]
    labels = [queries[q]["label"] for q in range(4)]
    assert ev.score("memes", outs) == pytest.approx(metrics.roc_auc(list(want), labels), abs=1e-6)


def test_evaluate_aggregates_seeds_with_numpy_mean_and_std(world_model, tmp_path, monkeypatch):
    """--seeds 3: one cell per seed, and the returned score and results.json / results.md hold their mean and std
    (numpy's; the sample std, ddof=1, as flamingo_jax.ablations_table) in the tables' units."""
    config, params, vocab = world_model
    per_seed = {0: 0.31, 1: 0.55, 2: 0.12}
    monkeypatch.setattr(harness.Evaluator, "predict",
                        lambda self, task, shots, seed, *a, **k: [dict(id=f"q{seed}", index=0, prediction=str(seed))])
    monkeypatch.setattr(harness.Evaluator, "score", lambda self, task, outs: per_seed[int(outs[0]["prediction"])])
    out = evaluate.evaluate(config, str(tmp_path), ["vqa"], [2], seeds=3, params=params, checkpoint_id="ck",
                            batch_size=2, num_beams=1, max_queries=1, progress=False, vocab=vocab)
    vals = np.array(list(per_seed.values()))
    assert out == {"vqa": {2: pytest.approx(vals.mean())}}
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert sorted(c["seed"] for c in results["cells"].values()) == [0, 1, 2]
    (summary, ) = results["summary"].values()
    row = summary["vqa"]["2"]
    assert row["seeds"] == 3
    assert row["mean"] == pytest.approx(100 * vals.mean()) and row["std"] == pytest.approx(100 * vals.std(ddof=1))
    md = (tmp_path / "eval" / "results.md").read_text()
    assert f"| vqa | vqa_accuracy | {100 * vals.mean():.1f} ± {100 * vals.std(ddof=1):.1f} |" in md


def test_a_styled_query_shows_its_shots_in_its_own_style():
    """An episode's shots answer in the query's style (a world with episode_styles): the support record's reference
    of that style, whatever the support record's own style; an unstyled query shows them as before, and a styled query
    with unstyled support records is a one-line error."""
    v = _Vocab()
    sup = [
        dict(question="Colour?", answers=["It is red."] * 3, style=1,
             styled=["red", "It is red.", "The answer is red."])
    ]
    q = dict(question="Where?", answers=["The answer is left."], style=2)
    p = prompts.build_prompt(v, "vqa", sup, [4], q, text_only=False, seed=0, query_index=0)
    assert p.tokens[2:2 + len(v.encode("Question: Colour? Answer: The answer is red."))] == v.encode(
        "Question: Colour? Answer: The answer is red.")
    plain = prompts.build_prompt(v, "vqa", sup, [4], dict(question="Where?", answers=["left"]), text_only=False, seed=0,
                                 query_index=0)
    assert v.encode(
        "Question: Colour? Answer: It is red.") == plain.tokens[2:2 +
                                                                len(v.encode("Question: Colour? Answer: It is red."))]
    with pytest.raises(ValueError, match="episode_styles"):
        prompts.build_prompt(v, "vqa", [dict(question="Colour?", answers=["red"])], [4], q, text_only=False, seed=0,
                             query_index=0)


def test_text_only_shots_show_the_shots_text_and_only_the_querys_image(world_model, tmp_path, monkeypatch):
    """--text_only_shots: every prompt holds the shots' text and one <image> (the query's), and the cells are rows of
    their own beside the usual ones."""
    config, params, vocab = world_model
    built = []
    real_build = prompts.build_prompt
    monkeypatch.setattr(harness.prompts, "build_prompt", lambda *a, **k: built.append(real_build(*a, **k)) or built[-1])
    kw = dict(params=params, checkpoint_id="test", batch_size=2, num_beams=1, max_queries=2, progress=False,
              vocab=vocab)
    evaluate.evaluate(config, str(tmp_path), ["vqa"], [2], text_only_shots=True, **kw)
    assert len(built) == 2 and all(
        p.tokens.count(vocab.image_id) == 1 and p.support == [] and len(p.text_only) == 2 for p in built)
    shots_text = [[t for t in p.tokens if t != vocab.image_id] for p in built]
    built.clear()
    evaluate.evaluate(config, str(tmp_path), ["vqa"], [2], **kw)  # not served from the text-only cells
    assert [p.tokens.count(vocab.image_id) for p in built] == [3, 3]
    assert [[t for t in p.tokens if t != vocab.image_id] for p in built] == shots_text  # the same shots, same text
    cells = json.loads((tmp_path / "eval" / "results.json").read_text())["cells"].values()
    assert sorted(c["selection"] for c in cells) == ["random", "random-textonly"]
