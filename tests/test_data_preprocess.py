"""Token layouts, media index (phi), loss mask, image/video preprocessing and the bad-record rules."""

import io

import numpy as np
import pytest
from PIL import Image

from flamingo_jax.data import images, pipeline, preprocess, tokens
from flamingo_jax.data.testing import tiny_config, tiny_vocab
from flamingo_jax.data.vocab import Vocabulary


class CharVocab(Vocabulary):
    """A hand-checkable vocabulary: pad 0, eos 1, bos 2, letters a..z = 3..28; <image> 29, <EOC> 30."""
    base_size, pad_id, eos_id, bos_id = 29, 0, 1, 2

    def encode(self, text):
        return [3 + ord(c) - ord("a") for c in text if c.isalpha()]

    def _decode_base(self, ids):
        return "".join(chr(ord("a") + i - 3) for i in ids)


V = CharVocab()
B, E, P, I, C = V.bos_id, V.eos_id, V.pad_id, V.image_id, V.eoc_id
a, b, c, d, e = V.encode("abcde")


def _png(h=20, w=40, colour=(200, 10, 10)):
    buf = io.BytesIO()
    Image.fromarray(np.full((h, w, 3), colour, np.uint8)).save(buf, "PNG")
    return buf.getvalue()


# ---- hand-made sequence: <BOS> a b <image> c d <EOC> <image> e <EOC> <EOS> <pad> <pad>
SEQ = np.array([B, a, b, I, c, d, C, I, e, C, E, P, P], np.int32)
LENGTH = 11


def test_media_index_previous_mode_image_token_maps_to_its_own_image():
    toks, _ = tokens.shift(SEQ)
    assert tokens.media_index(toks, I).tolist() == [0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 2]


def test_media_index_next_mode_maps_text_to_the_next_image():
    toks, _ = tokens.shift(SEQ)
    # text before image 1 -> 1; <image> tokens keep their own; text after the last image -> 0 (none follows)
    assert tokens.media_index(toks, I, next_image=True).tolist() == [1, 1, 1, 1, 2, 2, 2, 2, 0, 0, 0, 0]


def test_loss_mask_paper_rule():
    # targets: a b <image> c d <EOC> <image> e <EOC> <EOS> <pad> <pad>
    assert tokens.loss_mask(SEQ, LENGTH, V, "paper").tolist() == [1, 1, 0, 1, 1, 1, 0, 1, 1, 1, 0, 0]


def test_loss_mask_openflamingo_rule():
    # no loss before the first <image> target, none after <EOC> until the next <image> (the final <EOS>).
    assert tokens.loss_mask(SEQ, LENGTH, V, "openflamingo").tolist() == [0, 0, 0, 1, 1, 1, 0, 1, 1, 0, 0, 0]


def test_pair_layout_and_truncation_keeps_eoc_eos():
    ids, n = tokens.pair_ids(V, V.encode("abc"), seq_len=8)
    assert ids.tolist() == [B, I, a, b, c, C, E, P, P] and n == 7
    ids, n = tokens.pair_ids(V, V.encode("abcdeabcde"), seq_len=6)
    assert ids.tolist() == [B, I, a, b, c, C, E] and n == 7


def test_interleaved_stream_puts_eoc_before_every_image_but_a_leading_one():
    ids, img = tokens.interleaved_stream(V, [("image", 0), ("text", [a]), ("image", 1), ("text", [b])])
    assert ids == [B, I, a, C, I, b, C, E]
    assert img == [-1, 0, -1, -1, 1, -1, -1, -1]


def test_window_keeps_at_most_max_images_and_fills_with_text():
    items = []
    for k in range(4):
        items += [("image", k), ("text", [a, b])]
    ids, img = tokens.interleaved_stream(V, items)
    out, n, kept, skipped = tokens.window(ids, img, seq_len=20, max_images=2, rng=None, pad_id=P, eoc_id=C)
    assert kept == [0, 1] and skipped == 2
    # the two extra <image> tokens and the <EOC> before each are removed, the rest is kept
    assert out[:n].tolist() == [B, I, a, b, C, I, a, b, a, b, a, b, C, E] and n == len(ids) - 4
    rng = np.random.default_rng(0)
    for _ in range(20):
        out, n, kept, _ = tokens.window(ids, img, seq_len=6, max_images=5, rng=rng, pad_id=P)
        assert n == 7 and (out[:-1] == I).sum() == len(kept)  # the inputs (all but the last id) show each kept image
    # an <image> in the last slot is only a target: its image is not kept
    last = [B, a, b, I, a]
    out, n, kept, _ = tokens.window(last, [-1, -1, -1, 0, -1], seq_len=3, max_images=5, rng=None, pad_id=P)
    assert out.tolist() == [B, a, b, I] and kept == []


def test_resize_pad_keeps_aspect_and_pads_with_mean():
    img = np.zeros((10, 20, 3), np.uint8)
    img[:, :10] = 255
    out = images.resize_pad(img, 8)
    assert out.shape == (8, 8, 3) and out.dtype == np.float32
    assert np.allclose(out[0], out[0, 0]) and np.allclose(out[0, 0], 0.5, atol=0.02)  # padding = mean colour
    assert out[4, 0, 0] > 0.95 and out[4, 7, 0] < 0.05  # content kept, not stretched


def test_frame_sampling_one_fps_from_two_fps():
    assert images.sample_frame_indices(16, 2.0, 8, 1.0, None).tolist() == [0, 2, 4, 6, 8, 10, 12, 14]
    idx = images.sample_frame_indices(20, 2.0, 8, 1.0, np.random.default_rng(0))
    assert np.all(np.diff(idx) == 2) and idx[-1] <= 19
    assert images.sample_frame_indices(3, 1.0, 5, 1.0, None).tolist() == [0, 1, 2, 2, 2]  # short: repeat last
    with pytest.raises(images.BadRecord):
        images.sample_frame_indices(0, 1.0, 8, 1.0, None)


def _spec(kind, **kw):
    base = dict(kind=kind, seq_len=16, max_images=2, frames=1, image_size=8, colour_strength=0.0)
    base.update(kw)
    return preprocess.ExampleSpec(**base)


def test_augmentation_only_in_training():
    rec = {"id": "x", "image": _png(), "text": "abc"}
    spec = _spec("pair", flip_prob=1.0, colour_strength=0.3, max_images=1)
    ev1, _ = preprocess.Preprocessor(spec, V, train=False)(rec, np.random.default_rng(0))
    ev2, _ = preprocess.Preprocessor(spec, V, train=False)(rec, np.random.default_rng(1))
    tr, _ = preprocess.Preprocessor(spec, V, train=True)(rec, np.random.default_rng(1))
    assert np.array_equal(ev1["images"], ev2["images"])
    assert not np.allclose(ev1["images"], tr["images"])


BAD = [
    ({"id": "1", "image": b"not an image", "text": "abc"}, "pair", "undecodable_image"),
    ({"id": "2", "image": b"", "text": "abc"}, "pair", "missing_image"),
    ({"id": "3", "image": _png(), "text": "   "}, "pair", "empty_text"),
    ({"id": "4", "frames": [], "fps": 1.0, "text": "abc"}, "video_text", "no_frames"),
    ({"id": "5", "frames": [_png(), b"junk"], "fps": 1.0, "text": "abc"}, "video_text", "undecodable_image"),
    ({"id": "6", "texts": ["ab", "cd"], "images": [b"junk"], "image_positions": [1]}, "interleaved", "no_images"),
    ({"id": "7", "texts": ["", " "], "images": [_png()], "image_positions": [0]}, "interleaved", "empty_text"),
]


@pytest.mark.parametrize("rec,kind,reason", BAD, ids=[r for _, _, r in BAD])
def test_bad_records_are_dropped_with_their_reason(rec, kind, reason):
    pre = preprocess.Preprocessor(_spec(kind, frames=2 if kind == "video_text" else 1), V)
    assert preprocess.safe_call(pre, rec, np.random.default_rng(0)) == {"dropped": reason}


def test_interleaved_repairs_bad_images_positions_and_too_many_images():
    rec = {
        "id": "p", "texts": ["ab", "cd", "ee"], "images": [_png(), b"", _png(), _png(),
                                                           _png()], "image_positions": [0, 1, 7, 2, 3]
    }
    spec = _spec("interleaved", seq_len=32, max_images=5, max_doc_images=4)
    out = preprocess.safe_call(preprocess.Preprocessor(spec, V, train=False), rec, None)
    assert sorted(out["events"]) == ["bad_position", "image_dropped:missing_image", "too_many_images"]
    ex = out["example"]
    # 4 images kept by max_doc_images, the missing one removed: 3 good images remain, all in the window.
    assert ex["image_mask"].tolist() == [True, True, True, False, False]
    assert (ex["tokens"] == I).sum() == 3 and ex["media_index"].max() == 3


def test_dataset_iterator_counts_drops_and_keeps_going():
    good = {"image": _png(), "text": "abc"}
    source = [dict(good, id=str(i)) if i % 3 else {"id": str(i), "image": b"bad", "text": "abc"} for i in range(12)]
    pre = preprocess.Preprocessor(_spec("pair", max_images=1), V)
    it = pipeline.DatasetIterator("pairs", source, pre, batch_size=4, seed=0, num_threads=1, shuffle=False)
    batches = [next(it) for _ in range(4)]  # 16 good examples need 24 records: two passes over the data
    assert all(x["tokens"].shape == (4, 16) for x in batches)
    assert it.counters["dropped/undecodable_image"] == 8 and it.counters["records"] == 24


def test_dataset_of_only_bad_records_fails_with_a_clear_message():
    source = [{"id": str(i), "image": b"", "text": "abc"} for i in range(5)]
    pre = preprocess.Preprocessor(_spec("pair", max_images=1), V)
    it = pipeline.DatasetIterator("broken", source, pre, batch_size=2, seed=0, num_threads=1, max_consecutive_drops=50)
    with pytest.raises(RuntimeError, match="'broken'.*bad records in a row"):
        next(it)


def test_world_vocab_marks_new_tokens_after_the_base_vocabulary():
    v = tiny_vocab()
    assert v.base_size == tiny_config().vocab.size  # the model config can rely on config.data.vocab.size
    assert (v.image_id, v.eoc_id, v.size) == (v.base_size, v.base_size + 1, v.base_size + 2)
    ids = v.encode("a big red vog")
    assert max(ids) < v.base_size
    assert v.decode([v.bos_id, v.image_id] + ids + [v.eoc_id, v.eos_id, v.pad_id]) == \
        "<BOS><image>a big red vog<EOC><EOS>"
    assert v.encode(" big") != v.encode("big")  # the p_space augmentation really changes the tokens


def test_text_and_contrastive_kinds():
    text_ex, _ = preprocess.Preprocessor(_spec("text", seq_len=6), V, train=False)({"id": "t", "text": "abc"}, None)
    assert text_ex["tokens"].tolist() == [B, a, b, c, E, P] and text_ex["loss_mask"].tolist() == [1, 1, 1, 1, 0, 0]
    assert not text_ex["image_mask"].any() and text_ex["media_index"].max() == 0
    rec = {"id": "c", "image": _png(), "text": "ab"}
    ex, _ = preprocess.Preprocessor(_spec("contrastive", seq_len=6, max_images=1), V, train=False)(rec, None)
    assert ex["tokens"].tolist() == [B, a, b, E, P, P] and ex["loss_mask"].tolist() == [1, 1, 1, 1, 0, 0]
    assert ex["images"].shape == (1, 1, 8, 8, 3) and ex["image_mask"].tolist() == [True]


def test_pair_space_prepended_about_half_the_time():
    pre = preprocess.Preprocessor(_spec("pair", max_images=1), tiny_vocab())
    rec = {"id": "x", "image": _png(), "text": "big"}
    firsts = [pre(rec, np.random.default_rng(s))[0]["tokens"][2] for s in range(200)]
    assert 60 < sum(f == firsts[0] for f in firsts) < 140 and len(set(firsts)) == 2
