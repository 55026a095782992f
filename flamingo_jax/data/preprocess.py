"""Record -> model example, per record kind, with the documented bad-record rules.

An example (one sequence) is a dict of numpy arrays:
  tokens int32[L], targets int32[L], loss_mask float32[L], media_index int32[L],
  images float32[T_img, F, S, S, 3] in [0, 1], image_mask bool[T_img]
(T_img = max_images, F = frames; absent media slots are zeros with image_mask False).
The 'contrastive' kind (vision pretraining) instead gives images float32[1, 1, S, S, 3] and the caption
as <BOS>text<EOS> tokens with loss_mask marking real tokens (media_index all 0).

Bad-record rules (counted under the reason name; never a crash):
  drop the record:
    missing_image / undecodable_image  a pair's or clip's image/frame is b'' (listed but missing file) or
                                       cannot be decoded;
    empty_text                         a pair/video/text record whose text is empty after stripping;
    no_images                          an interleaved page left with no usable image;
    no_frames                          a clip with zero frames;
  keep and repair (counted as events):
    image_dropped:<reason>             an interleaved page's image that is missing/undecodable: the image
                                       and its <image> token are removed, the page is kept;
    too_many_images                    a page with more than max_doc_images images keeps the first ones;
    bad_position                       an image position outside [0, #texts] is clipped into range;
    window_images_skipped              <image> tokens beyond max_images inside the window are skipped;
    text_truncated                     a pair caption longer than the sequence is cut (<EOC><EOS> kept).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import numpy as np

from flamingo_jax.data import images as img_lib
from flamingo_jax.data import schema, tokens as tok
from flamingo_jax.data.images import BadRecord
from flamingo_jax.data.vocab import Vocabulary

TRAINING_KINDS = ("interleaved", "pair", "video_text", "text", "contrastive")


@dataclasses.dataclass(frozen=True)
class ExampleSpec:
    """How one dataset's records become examples (built from a config.data.datasets entry)."""
    kind: str  # one of TRAINING_KINDS
    seq_len: int = 32  # L
    max_images: int = 1  # T_img (5 for interleaved, as in the paper)
    frames: int = 1  # F (8 for video)
    fps: float = 1.0  # video sampling rate (frames per second)
    image_size: int = 64  # S
    p_next: float = 0.5  # interleaved: probability a page maps text to the NEXT image
    p_space: float = 0.5  # pairs: probability a space is prepended to the text
    flip_prob: float = 0.0  # training augmentation; see config.py for why the world's default is 0
    colour_strength: float = 0.1  # training augmentation: brightness/contrast/saturation jitter amplitude
    loss_rule: str = "paper"  # 'paper' | 'openflamingo' (tokens.py)
    max_doc_images: int = 32  # interleaved pages keep at most this many images

    @classmethod
    def from_config(cls, c: Mapping[str, Any], **overrides) -> 'ExampleSpec':
        fields = {f.name for f in dataclasses.fields(cls)}
        d = {k: v for k, v in dict(c).items() if k in fields}
        d.update(overrides)
        if d.get("kind") not in TRAINING_KINDS:
            raise ValueError(f"dataset kind must be one of {TRAINING_KINDS}, got {d.get('kind')!r}")
        return cls(**d)


def empty_media(spec: ExampleSpec) -> tuple[np.ndarray, np.ndarray]:
    return (np.zeros((spec.max_images, spec.frames, spec.image_size, spec.image_size, 3),
                     np.float32), np.zeros((spec.max_images, ), bool))


class Preprocessor:
    """Callable (record, rng) -> (example, events); raises BadRecord to drop. rng None = no randomness
    (evaluation): no augmentation, no space, centred frames, window at the start, 'previous' phi mode."""

    def __init__(self, spec: ExampleSpec, vocab: Vocabulary, train: bool = True):
        self.spec, self.vocab, self.train = spec, vocab, train

    def __call__(self, record: Mapping[str, Any],
                 rng: np.random.Generator | None) -> tuple[dict[str, np.ndarray], list[str]]:
        rec = schema.normalize(dict(record))
        rng = rng if self.train else None
        return getattr(self, f"_{self.spec.kind}")(rec, rng)

    # -- media ----------------------------------------------------------------------------------------
    def _image(self, data: bytes, rng) -> np.ndarray:
        """float32[F, S, S, 3]: an image is a 1-frame video; a dataset configured with F > 1 repeats it."""
        x = img_lib.resize_pad(img_lib.decode_image(data), self.spec.image_size)[None]
        x = np.repeat(x, self.spec.frames, axis=0) if self.spec.frames > 1 else x
        return self._augment(x, rng)

    def _augment(self, x: np.ndarray, rng) -> np.ndarray:
        if rng is None:
            return x
        return img_lib.augment(x, rng, self.spec.flip_prob, self.spec.colour_strength)

    def _finish(self, ids: np.ndarray, length: int, media: list[np.ndarray],
                next_image: bool = False) -> dict[str, np.ndarray]:
        s = self.spec
        tokens, targets = tok.shift(ids)
        images, mask = empty_media(s)
        for k, m in enumerate(media[:s.max_images]):
            images[k] = m
            mask[k] = True
        return {
            "tokens": tokens, "targets": targets, "loss_mask": tok.loss_mask(ids, length, self.vocab, s.loss_rule),
            "media_index": tok.media_index(tokens, self.vocab.image_id,
                                           next_image), "images": images, "image_mask": mask
        }

    def _caption_ids(self, text: str, rng) -> list[int]:
        text = text.strip()
        if not text:
            raise BadRecord("empty_text")
        if rng is not None and rng.random() < self.spec.p_space:
            text = " " + text
        return self.vocab.encode(text)

    # -- kinds ----------------------------------------------------------------------------------------
    def _pair(self, rec, rng):
        ids_text = self._caption_ids(rec["text"], rng)
        media = self._image(rec["image"], rng)
        ids, length = tok.pair_ids(self.vocab, ids_text, self.spec.seq_len)
        events = ["text_truncated"] if len(ids_text) > self.spec.seq_len + 1 - 4 else []
        return self._finish(ids, length, [media]), events

    def _video_text(self, rec, rng):
        ids_text = self._caption_ids(rec["text"], rng)
        s = self.spec
        clip = img_lib.clip_frames(rec["frames"], rec["fps"], s.frames, s.fps, s.image_size, rng)
        ids, length = tok.pair_ids(self.vocab, ids_text, s.seq_len)
        events = ["text_truncated"] if len(ids_text) > s.seq_len + 1 - 4 else []
        return self._finish(ids, length, [self._augment(clip, rng)]), events

    def _text(self, rec, rng):
        text = rec["text"].strip()
        if not text:
            raise BadRecord("empty_text")
        ids, length = tok.text_ids(self.vocab, self.vocab.encode(text), self.spec.seq_len, rng)
        return self._finish(ids, length, []), []

    def _contrastive(self, rec, rng):
        text = rec["text"].strip()
        if not text:
            raise BadRecord("empty_text")
        media = self._image(rec["image"], rng)
        ids, length = tok.pad_to([self.vocab.bos_id] + self.vocab.encode(text) + [self.vocab.eos_id], self.spec.seq_len,
                                 self.vocab.pad_id)
        images, mask = empty_media(self.spec)
        images[0], mask[0] = media, True
        real = (np.arange(self.spec.seq_len) < length).astype(np.float32)
        return {
            "tokens": ids, "targets": ids.copy(), "loss_mask": real, "media_index": np.zeros_like(ids),
            "images": images, "image_mask": mask
        }, []

    def _interleaved(self, rec, rng):
        s = self.spec
        texts, imgs, pos = rec["texts"], rec["images"], rec["image_positions"]
        events: list[str] = []
        if len(imgs) != len(pos):
            raise BadRecord("bad_positions", f"{len(imgs)} images but {len(pos)} positions")
        if len(imgs) > s.max_doc_images:
            imgs, pos = imgs[:s.max_doc_images], pos[:s.max_doc_images]
            events.append("too_many_images")
        if any(not 0 <= p <= len(texts) for p in pos):
            events.append("bad_position")
            pos = [min(max(int(p), 0), len(texts)) for p in pos]
        if not any(t.strip() for t in texts):
            raise BadRecord("empty_text")
        # Document order: image k sits just before texts[pos[k]]; stable for equal positions.
        items: list[tuple[str, Any]] = []
        order = sorted(range(len(imgs)), key=lambda k: (pos[k], k))
        j = 0
        for ti in range(len(texts) + 1):
            while j < len(order) and pos[order[j]] == ti:
                items.append(("image", order[j]))
                j += 1
            if ti < len(texts) and texts[ti].strip():
                prefix = " " if any(kind == "text" for kind, _ in items) else ""
                items.append(("text", self.vocab.encode(prefix + texts[ti].strip())))
        # Decode lazily and only the images that land in the window; a bad image is removed from the page
        # and the window is taken again, so the page keeps as many good images as it has.
        bad: set[int] = set()
        while True:
            use = [it for it in items if not (it[0] == "image" and it[1] in bad)]
            if not any(kind == "image" for kind, _ in use):
                raise BadRecord("no_images")
            stream, img_of = tok.interleaved_stream(self.vocab, use)
            wrng = np.random.default_rng(rng.integers(2**63)) if rng is not None else None
            ids, length, kept, skipped = tok.window(stream, img_of, s.seq_len, s.max_images, wrng, self.vocab.pad_id,
                                                    self.vocab.eoc_id)
            media, failed = [], None
            for k in kept:
                try:
                    media.append(self._image(imgs[k], rng))
                except BadRecord as e:
                    failed = (k, e.reason)
                    break
            if failed is None:
                break
            bad.add(failed[0])
            events.append(f"image_dropped:{failed[1]}")
        if skipped:
            events.append("window_images_skipped")
        next_image = rng is not None and rng.random() < s.p_next
        return self._finish(ids, length, media, next_image=next_image), events


def safe_call(pre: Preprocessor, record: Mapping[str, Any], rng: np.random.Generator | None) -> dict[str, Any]:
    """Never raises for bad data: {'example': ..., 'events': [...]} or {'dropped': reason}."""
    try:
        example, events = pre(record, rng)
        return {"example": example, "events": events}
    except BadRecord as e:
        return {"dropped": e.reason}
