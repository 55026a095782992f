"""The schema of `config.data`, with defaults for the generated world (the paper's mixture, tiny sizes).

config.data fields:
    source          'world': read the generated world directly (records rendered on demand, no disk);
                    'synthetic': random well-formed batches (data/synthetic.py, handled by the trainer);
                    'tfds': read prepared TFDS builders (array_record) from data_dir; world datasets are
                    prepared on first use, real-file builders need their manual_dir;
                    'seqio': seqio Tasks/Mixtures (datasets.<name>.seqio_task; '' = ours over the same
                    examples as the grain sources; flamingo_jax/data/seqio_source.py).
    data_dir        TFDS data dir (prepared datasets) and cache dir for the world vocabulary.
    manual_dir      where real-file builders find the user's files: <manual_dir>/<builder>/ when present,
                    else manual_dir itself ('' = <data_dir>/downloads/manual); an entry of datasets or
                    eval_sets may set its own manual_dir.
    world           WorldConfig fields (flamingo_jax/data/world/generate.py): seed, image_size,
                    video_frames, video_fps, n_entities, scale, max_page_images, quiz_pages,
                    fact_pages, max_quiz_images, text_sections, clip_names, clip_pairs, page_styles.
    vocab           kind 'world' (SentencePiece trained on the world's text, cached in data_dir),
                    'sentencepiece' (path to a .model) or 'hf' (local HuggingFace tokenizer dir, path);
                    size: the LM's base vocabulary size for 'world' (<image> = size, <EOC> = size + 1;
                    a small world may need fewer pieces: the rest of the ids are never produced).
    mode            'accumulate' (every step yields a batch of EVERY dataset, the paper's default),
                    'round_robin' (one dataset per step, cycling; ablation ii) or
                    'sample' (one dataset per step drawn with probability proportional to its weight).
    seed            data seed (shuffling, augmentation, windows, p_next draws).
    image_size      S, model input resolution (images are resized keeping aspect, mean-padded).
    num_threads     grain read threads per dataset; prefetch: examples buffered per dataset.
    num_workers     grain worker PROCESSES per dataset (mp_prefetch) for decode-heavy data; 0 = threads only.
                    Batches are identical for any value; a checkpoint resumes with the value it was saved with.
    mixture         ordered list of dataset names used for training.
    eval_sets.<name> few-shot evaluation sets: builder, builder_config, kind, support / query splits,
                    frames, fps (flamingo_jax/data/eval_sets.py; the world's five DEV analogues by default).
    datasets.<name> builder ('flamingo_world' or a real-file builder name), builder_config (the TFDS
                    config name, e.g. the world subset), split, kind (interleaved | pair | video_text | text |
                    contrastive), weight (lambda in the loss), batch_size (GLOBAL; each process reads
                    batch_size // process_count), seq_len, max_images
                    (T_img), frames (F), fps, p_next, p_space, flip_prob, colour_strength, loss_rule,
                    max_doc_images, seqio_task (source 'seqio': a registered Task or Mixture name; '' = ours).

Weights follow the paper: M3W 1.0, ALIGN 0.2, LTIP 0.2, VTP 0.03; the world's analogues use the same.
Flips are off for the world (its captions and questions say 'left'/'right', which a flip would make
false); set flip_prob=0.5 for web data as in the paper.
"""

from __future__ import annotations

import dataclasses

import ml_collections

from flamingo_jax.data.eval_entries import real_eval_sets, world_eval_sets
from flamingo_jax.data.world.world_config import WorldConfig, world_config_from

PAPER_WEIGHTS = {"m3w": 1.0, "align": 0.2, "ltip": 0.2, "vtp": 0.03}


def _dataset(builder_config: str, kind: str, weight: float, batch_size: int, seq_len: int, max_images: int = 1,
             frames: int = 1, **extra) -> ml_collections.ConfigDict:
    d = dict(builder="flamingo_world", builder_config=builder_config, split="train", kind=kind, weight=weight,
             batch_size=batch_size, seq_len=seq_len, max_images=max_images, frames=frames, fps=1.0, p_next=0.5,
             p_space=0.5, flip_prob=0.0, colour_strength=0.1, loss_rule="paper", max_doc_images=32, manual_dir="",
             seqio_task="")
    d.update(extra)
    return ml_collections.ConfigDict(d)


def default_data_config() -> ml_collections.ConfigDict:
    """config.data for training on the generated world with the paper's mixture and weights."""
    c = ml_collections.ConfigDict()
    c.source = "world"
    c.data_dir = ""  # '' = ~/tensorflow_datasets
    c.manual_dir = ""
    c.world = ml_collections.ConfigDict(dataclasses.asdict(WorldConfig()))
    c.vocab = ml_collections.ConfigDict(dict(kind="world", size=1000, path=""))
    c.mode = "accumulate"
    c.seed = 0
    c.image_size = 64
    c.num_threads = 2
    c.prefetch = 16
    c.num_workers = 0
    c.mixture = ["m3w", "align", "ltip", "vtp"]
    c.datasets = ml_collections.ConfigDict({
        # M3W analogue: random 256-token window, first 5 images, phi mapping to the next image with p 0.5.
        "m3w": _dataset("interleaved", "interleaved", PAPER_WEIGHTS["m3w"], 8, 256, max_images=5),
        # ALIGN analogue: short noisy alt-text, text length 32.
        "align": _dataset("alt_text", "pair", PAPER_WEIGHTS["align"], 16, 32),
        # LTIP analogue: long descriptions, text length 64.
        "ltip": _dataset("long_text", "pair", PAPER_WEIGHTS["ltip"], 16, 64),
        # VTP analogue: 8 frames at 1 FPS.
        "vtp": _dataset("video_text", "video_text", PAPER_WEIGHTS["vtp"], 4, 32, frames=8),
        # Not in the default mixture: LM pretraining text and contrastive vision pretraining pairs.
        "text": _dataset("text", "text", 1.0, 16, 128, p_space=0.0),
        "clip": _dataset("clip_pairs", "contrastive", 1.0, 32, 32),
    })
    c.eval_sets = world_eval_sets()
    return c


def tiny_data_config() -> ml_collections.ConfigDict:
    """A small world and small batches for tests and the tiny experiment (seconds on a CPU)."""
    c = default_data_config()
    c.world.image_size = 32
    c.world.scale = 0.02
    c.world.video_frames = 8
    c.vocab.size = 512
    c.image_size = 32
    c.num_threads = 1
    c.prefetch = 4
    for name in c.datasets:
        c.datasets[name].batch_size = 2
    c.datasets.m3w.seq_len = 64
    c.datasets.vtp.frames = 4
    c.eval_sets.video_qa.frames = 4
    c.eval_sets.video_captions.frames = 4
    return c


def real_data_config(manual_dir: str, data_dir: str = "", vocab_path: str = "") -> ml_collections.ConfigDict:
    """config.data for the paper's mixture on the user's own files (real-file builders, TFDS prepared once).

    Layout under manual_dir: mmc4/ (M3W stand-in), align/ and ltip/ (image_text_pairs layouts), vtp/
    (video_text_frames layout), and one folder per eval set builder (coco_karpathy/, vqav2/, ...).
    vocab_path: a local HuggingFace tokenizer directory of the imported LM.
    """
    c = default_data_config()
    c.source, c.data_dir, c.manual_dir = "tfds", data_dir, manual_dir
    c.vocab = ml_collections.ConfigDict(dict(kind="hf", size=0, path=vocab_path))
    c.image_size = 320
    for name, builder, cfg_name in (("m3w", "mmc4", "sim024"), ("align", "image_text_pairs", "align"),
                                    ("ltip", "image_text_pairs", "ltip"), ("vtp", "video_text_frames", "vtp")):
        d = c.datasets[name]
        d.builder, d.builder_config = builder, cfg_name
        d.manual_dir = "" if name == "m3w" else f"{manual_dir}/{name}"
        d.flip_prob = 0.5  # web data: random flips as in the paper
    for name in ("text", "clip"):
        del c.datasets[name]
    c.eval_sets = real_eval_sets()
    return c


def world_config(data_config: ml_collections.ConfigDict) -> WorldConfig:
    """The WorldConfig described by config.data.world."""
    return world_config_from(data_config.world.to_dict())
