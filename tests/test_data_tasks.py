"""seqio Tasks and the Mixture over the same examples as the grain pipeline."""

import numpy as np
import seqio

from flamingo_jax.data import mixture, tasks
from flamingo_jax.data.testing import tiny_config, tiny_vocab


def test_seqio_tasks_and_mixture_with_paper_weights():
    cfg = tiny_config()
    v = tiny_vocab()
    names = tasks.register(cfg, v)
    mix = seqio.get_mixture_or_task(names["mixture"])
    rates = {t.name: mix.get_rate(t) for t in mix.tasks}
    assert rates == {names["tasks"][n]: cfg.datasets[n].weight for n in cfg.mixture}

    task = seqio.get_mixture_or_task(names["tasks"]["align"])
    ds = task.get_dataset(sequence_length=None, split="train", shuffle=False, seed=0)
    examples = list(ds.take(4).as_numpy_iterator())
    for ex in examples:
        assert ex["tokens"].shape == (cfg.datasets.align.seq_len, ) and ex["images"].shape == (1, 1, 32, 32, 3)
        assert ex["tokens"][1] == v.image_id and ex["image_mask"].tolist() == [True]
    # the Task's examples are the grain iterator's, in its order (its shuffle, its per-position augmentation)
    grain_batches = mixture.make_dataset_iterator(cfg, "align", v, batch_size=4)
    want = next(grain_batches)
    for k in tasks.FEATURES:
        np.testing.assert_array_equal(np.stack([ex[k] for ex in examples]), want[k], err_msg=k)
    assert [int(ex["_index"]) for ex in examples] == [0, 1, 2, 3]

    it = mix.get_dataset(sequence_length=None, split="train", shuffle=False, seed=0).as_numpy_iterator()
    seen = {next(it)["images"].shape for _ in range(12)}
    assert (5, 1, 32, 32, 3) in seen  # the interleaved task (weight 1.0) dominates the mixture
    del it  # a live tf.data iterator running tf.numpy_function can block interpreter exit
