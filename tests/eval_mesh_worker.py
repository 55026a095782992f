"""Evaluates the tiny world model on one device and on a mesh of 8 simulated devices (fsdp=4, model=2) under
JAX_TRANSFER_GUARD=disallow, and prints both runs' scores and predictions as JSON (one line, 'EVAL ...').

Used by test_eval_mesh.py in a subprocess: XLA_FLAGS=--xla_force_host_platform_device_count=8
python tests/eval_mesh_worker.py --shots 0,4
"""

import argparse
import json
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(__file__)))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shots", default="0,4")
    ap.add_argument("--max_queries", type=int, default=8)
    ap.add_argument("--num_beams", type=int, default=2)
    args = ap.parse_args()
    import jax
    import numpy as np

    assert jax.config.jax_transfer_guard == "disallow", "run with JAX_TRANSFER_GUARD=disallow"
    from flamingo_jax import sharding
    from flamingo_jax.evaluation import decoding, harness, prompts
    from flamingo_jax.train_state import dummy_inputs
    with jax.transfer_guard("allow"):
        import tiny  # makes a key at import

    with jax.transfer_guard("allow"):  # host params of the tests' world model (gates 0.5), then placed explicitly
        model_cfg, data, vocab, model, host = tiny.world_eval_model()
        host = jax.device_get(host)
    boxed = jax.eval_shape(lambda: model.init(jax.random.key(0), *dummy_inputs(model_cfg)))["params"]
    shots = [int(x) for x in args.shots.split(",")]
    out = {}
    for name, mesh_cfg, devices in (("one", dict(data=1, fsdp=1,
                                                 model=1), jax.devices()[:1]), ("mesh", dict(data=1, fsdp=4,
                                                                                             model=2), jax.devices())):
        mesh = sharding.make_mesh(mesh_cfg, devices)
        shardings = sharding.tree_shardings(boxed, mesh)
        params = jax.device_put(host, shardings)  # explicit, straight into the shardings
        nonrep = sum(1 for x in jax.tree.leaves(params) if not x.sharding.is_fully_replicated)
        ev = harness.Evaluator(model, params, harness.EvalData(data, vocab=vocab), batch_size=8,
                               num_beams=args.num_beams, progress=False, mesh=mesh, cache_dir=tempfile.mkdtemp())
        run = out[name] = {"sharded_params": nonrep}
        for task in data.eval_sets:
            for n in shots:
                preds = ev.predict(task, n, 0, "random", (0, 1), args.max_queries)
                run[f"{task}/{n}"] = dict(score=ev.score(task, preds), predictions=[p["prediction"] for p in preds])
        preds = ev.predict("vqa", 4, 0, "rices", (0, 1), args.max_queries)
        run["vqa/4/rices"] = dict(score=ev.score("vqa", preds), predictions=[p["prediction"] for p in preds])
        # ranking (close-ended sets): log-likelihoods of two candidates after 8 prompts
        cands = prompts.candidate_tokens(vocab, "classification")
        ctoks, cmask = decoding.right_pad(cands, max(map(len, cands)), vocab.pad_id)
        rng = np.random.default_rng(0)
        toks = rng.integers(3, vocab.base_size - 8, (8, 32)).astype(np.int32)
        toks[:, 5] = vocab.image_id
        tmask = np.ones((8, 32), bool)
        images = rng.random((8, 1, 1, data.image_size, data.image_size, 3), dtype=np.float32)
        visual = ev.decoder.encode(params, images)
        ll = ev.decoder.rank(params, toks, tmask, visual, np.ones((8, 1), bool), ctoks, cmask)
        run["rank_sharding"] = str(ll.sharding.spec)
        run["rank"] = jax.device_get(ll).tolist()
        # per-row candidates (dialog / video_choice options): each prompt its own 1 to 4 options of different
        # lengths, and each row alone through rank() (the harness's former row-at-a-time ranking)
        words = ["red", "blue cube", "a small green ball", "two", "left of the tree", "no", "yes", "three birds"]
        own = [prompts.candidate_tokens(vocab, "video_choice", (words * 2)[r:r + 1 + r % 4]) for r in range(8)]
        width = max(len(c) for cands in own for c in cands)
        ctoks, cmask = decoding.pad_candidate_rows(own, 4, width, vocab.pad_id)
        per_row = ev.decoder.rank_per_row(params, toks, tmask, visual, np.ones((8, 1), bool), ctoks, cmask)
        run["rank_per_row_sharding"] = str(per_row.sharding.spec)
        run["rank_per_row"] = jax.device_get(per_row).tolist()
        run["rank_row_at_a_time"] = [
            jax.device_get(ev.decoder.rank(params, toks, tmask, visual, np.ones((8, 1), bool), ctoks[r],
                                           cmask[r]))[r].tolist() for r in range(8)
        ]
        # generation without stop tokens (the untrained model would stop at once): every step of the beam
        # search and the greedy loop with the cache split over the batch
        for beams in (1, 3):
            gen = decoding.GenerationConfig(max_new_tokens=6, num_beams=beams, banned_ids=(vocab.image_id, ))
            g = jax.device_get(ev.decoder.generate(params, toks, tmask, visual, np.ones((8, 1), bool), gen))
            run[f"generate{beams}"] = {k: v.tolist() for k, v in g.items()}
    print("EVAL " + json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
