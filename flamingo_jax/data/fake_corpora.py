"""Generated corpora in the formats researchers hold, with planted corruption and the exact counts a
preparation must report (tests, benchmarks/input_pipeline.py and the README's "Real data at volume" check).

    python -m flamingo_jax.data.fake_corpora mmc4 --out DIR --docs 2000 --corrupt 0.05 --image_size 320

Writers (each returns the expected preparation tally of its split: 'written', 'skipped/<reason>' and
repair events, exactly as common.FileBuilder counts them):
  write_mmc4_wds        MMC4 as OpenFlamingo's WebDataset shards (json with image_base64 in image_info, or the
                        images as members of the same sample); corrupt documents cycle through a truncated
                        JPEG, a zero-byte image member, an image that was never fetched and bad json; the last
                        shard is cut inside a member (a truncated tar); some good pages carry one extra bad
                        image (repaired, kept).
  write_laion_wds       LAION-style pair shards (<key>.jpg + <key>.txt or <key>.json {"caption"}).
  write_obelics_parquet OBELICS-style parquet rows (texts/images columns) + images/ with img2dataset sidecars.
  write_video_frames    video_text_frames layout: train.jsonl + frames/<clip>/*.jpg.
Images are smooth random colour fields plus noise (JPEG sizes and decode costs of small web photos).
"""

from __future__ import annotations

import argparse
import base64
import collections
import io
import json
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

WORDS = ("a the red blue small large bird boat house tree river city old new photo of in on with near garden "
         "street market dog cat child table window light morning night road bridge").split()
MMC4_CORRUPTIONS = ("undecodable_image", "empty_image", "missing_image", "bad_json")


def jpeg(rng: np.random.Generator, size: int) -> bytes:
    low = rng.random((4, 4, 3)) * 255
    x = np.asarray(Image.fromarray(low.astype(np.uint8)).resize((size, size), Image.BILINEAR), np.float32)
    x = np.clip(x + rng.normal(0, 12, x.shape), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(x).save(buf, "JPEG", quality=85)
    return buf.getvalue()


def sentence(rng: np.random.Generator, n: int = 12) -> str:
    return " ".join(rng.choice(WORDS, size=n)).capitalize() + "."


class _Images:
    """A pool of distinct JPEGs (encoding 320x320 images is the slow part of writing a corpus)."""

    def __init__(self, rng: np.random.Generator, size: int, pool: int = 64):
        self.rng, self.pool = rng, [jpeg(rng, size) for _ in range(pool)]

    def __call__(self) -> bytes:
        return self.pool[int(self.rng.integers(len(self.pool)))]


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def write_mmc4_wds(out: str | Path, docs: int, corrupt: float = 0.05, docs_per_shard: int = 100, image_size: int = 64,
                   seed: int = 0, truncate_last: bool = True) -> dict[str, int]:
    """`docs` documents in <out>/shards/NNNNN.tar; round(corrupt * docs) of them corrupt (module docstring).
    Returns the expected tally of the 'train' split (documents lost to the cut shard are not counted)."""
    rng = np.random.default_rng(seed)
    images = _Images(rng, image_size)
    out = Path(out) / "shards"
    out.mkdir(parents=True, exist_ok=True)
    n_bad = int(round(corrupt * docs))
    bad_at = {
        int(i): MMC4_CORRUPTIONS[k % len(MMC4_CORRUPTIONS)]
        for k, i in enumerate(rng.choice(docs, size=n_bad, replace=False))
    }
    expected: collections.Counter = collections.Counter()
    shards = [list(range(s, min(s + docs_per_shard, docs))) for s in range(0, docs, docs_per_shard)]
    for n, doc_ids in enumerate(shards):
        path = out / f"{n:05d}.tar"
        outcomes = []  # (tar offset after the sample, its counter updates)
        with tarfile.open(path, "w") as tar:
            for d in doc_ids:
                key = f"{d:08d}"
                texts = [sentence(rng) for _ in range(int(rng.integers(2, 5)))]
                n_img = int(rng.integers(1, 4))
                infos, members, counts = [], {}, collections.Counter()
                embed = d % 2 == 0  # OpenFlamingo embeds base64 in the json; the other half are sample members
                for k in range(n_img):
                    info = {
                        "image_name": f"{key}_{k}.jpg", "matched_text_index": int(rng.integers(len(texts))),
                        "matched_sim": float(rng.uniform(0.2, 0.4)), "raw_url": f"http://example.com/{key}/{k}.jpg"
                    }
                    data = images()
                    if embed:
                        info["image_base64"] = str(base64.b64encode(data))  # "b'...'" exactly as convert_mmc4_to_wds
                    else:
                        members[info["image_name"]] = data
                    infos.append(info)
                reason = bad_at.get(d)
                if reason is None and d % 25 == 3:  # a good page with one extra bad image: repaired, kept
                    infos.append({"image_name": f"{key}_x.jpg", "matched_text_index": 0, "matched_sim": 0.3})
                    counts["image_removed/missing_image"] += 1
                if reason in ("undecodable_image", "empty_image", "missing_image"):
                    for info in infos:  # every image of the page is bad: the page is skipped under that reason
                        info.pop("image_base64", None)
                        members.pop(info["image_name"], None)
                        if reason == "undecodable_image":
                            good = images()
                            members[info["image_name"]] = good[:len(good) // 2]  # a truncated JPEG
                        elif reason == "empty_image":
                            members[info["image_name"]] = b""  # a zero-byte member
                    counts[f"image_removed/{reason}"] += len(infos)
                    counts[f"skipped/{reason}"] += 1
                elif reason is None:
                    counts["written"] += 1
                doc = json.dumps({"url": f"http://example.com/{key}", "text_list": texts, "image_info": infos})
                if reason == "bad_json":
                    doc = doc[:len(doc) // 2]  # cut mid-object
                    counts = collections.Counter({"skipped/bad_json": 1})
                _add(tar, f"{key}.json", doc.encode())
                for name, data in members.items():
                    _add(tar, f"{key}.{name}", data)
                outcomes.append((tar.offset, counts))
        if truncate_last and n == len(shards) - 1 and len(doc_ids) > 2:
            cut_after = len(doc_ids) // 2  # samples [0, cut_after) survive; the cut falls inside the next one
            raw = path.read_bytes()
            path.write_bytes(raw[:outcomes[cut_after - 1][0] + 700])  # header + 188 bytes into its json
            outcomes = outcomes[:cut_after]
            expected["skipped/truncated_shard"] += 1
        for _, counts in outcomes:
            expected.update(counts)
    return dict(expected)


def write_laion_wds(out: str | Path, pairs: int, corrupt: float = 0.05, pairs_per_shard: int = 200,
                    image_size: int = 64, seed: int = 0) -> dict[str, int]:
    """LAION-style shards in <out>/train/NNNNN.tar; corrupt pairs cycle through a truncated JPEG, a zero-byte
    image, no image member and no caption. Returns the expected tally of the 'train' split."""
    rng = np.random.default_rng(seed)
    images = _Images(rng, image_size)
    folder = Path(out) / "train"
    folder.mkdir(parents=True, exist_ok=True)
    kinds = ("undecodable_image", "empty_image", "missing_image", "empty_text")
    bad_at = {int(i): kinds[k % 4] for k, i in enumerate(rng.choice(pairs, int(round(corrupt * pairs)), False))}
    expected: collections.Counter = collections.Counter()
    for s in range(0, pairs, pairs_per_shard):
        with tarfile.open(folder / f"{s // pairs_per_shard:05d}.tar", "w") as tar:
            for i in range(s, min(s + pairs_per_shard, pairs)):
                key, reason = f"{i:09d}", bad_at.get(i)
                data = images()
                if reason == "undecodable_image":
                    data = data[:len(data) // 2]
                elif reason == "empty_image":
                    data = b""
                if reason != "missing_image":
                    _add(tar, f"{key}.jpg", data)
                if reason != "empty_text":
                    caption = sentence(rng, int(rng.integers(4, 20)))
                    if i % 2:
                        _add(tar, f"{key}.txt", caption.encode())
                    else:
                        _add(tar, f"{key}.json",
                             json.dumps({"caption": caption, "url": f"http://example.com/{key}.jpg"}).encode())
                expected[f"skipped/{reason}" if reason else "written"] += 1
    return dict(expected)


def write_obelics_parquet(out: str | Path, docs: int, image_size: int = 64, seed: int = 0,
                          missing_every: int = 7) -> dict[str, int]:
    """OBELICS-style <out>/part-00000.parquet + images/ with img2dataset json sidecars; every
    `missing_every`-th URL was never fetched. Returns the expected tally of the 'train' split."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    images = _Images(rng, image_size, pool=16)
    out = Path(out)
    (out / "images" / "00000").mkdir(parents=True, exist_ok=True)
    rows, expected, url_n = [], collections.Counter(), 0
    for d in range(docs):
        texts, urls, good = [], [], 0
        for _ in range(int(rng.integers(2, 5))):
            texts.append(sentence(rng))
            urls.append(None)
            url = f"http://example.com/img/{url_n}.jpg"
            url_n += 1
            texts.append(None)
            urls.append(url)
            if url_n % missing_every:
                stem = out / "images" / "00000" / f"{url_n:09d}"
                stem.with_suffix(".jpg").write_bytes(images())
                stem.with_suffix(".json").write_text(json.dumps({"url": url, "status": "success"}))
                good += 1
            else:
                expected["image_removed/missing_image"] += 1
        rows.append({"id": f"doc{d}", "texts": texts, "images": urls})
        expected["written" if good else "skipped/missing_image"] += 1
    pq.write_table(pa.Table.from_pylist(rows), out / "part-00000.parquet")
    return dict(expected)


def write_video_frames(out: str | Path, clips: int, frames: int = 8, fps: float = 1.0, image_size: int = 64,
                       seed: int = 0) -> dict[str, int]:
    """video_text_frames layout: <out>/train.jsonl + frames/<clip>/NNNNN.jpg, `frames` frames per clip."""
    rng = np.random.default_rng(seed)
    images = _Images(rng, image_size, pool=32)
    out = Path(out)
    lines = []
    for c in range(clips):
        folder = out / "frames" / f"clip{c:06d}"
        folder.mkdir(parents=True, exist_ok=True)
        for f in range(frames):
            (folder / f"{f:05d}.jpg").write_bytes(images())
        lines.append(json.dumps({"video": folder.name, "caption": sentence(rng, 8), "fps": fps}))
    (out / "train.jsonl").write_text("\n".join(lines) + "\n")
    return {"written": clips}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("format", choices=("mmc4", "laion", "obelics", "video"))
    p.add_argument("--out", required=True)
    p.add_argument("--docs", type=int, default=2000, help="documents / pairs / clips")
    p.add_argument("--corrupt", type=float, default=0.05)
    p.add_argument("--image_size", type=int, default=320)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    if a.format == "mmc4":
        expected = write_mmc4_wds(a.out, a.docs, a.corrupt, image_size=a.image_size, seed=a.seed)
    elif a.format == "laion":
        expected = write_laion_wds(a.out, a.docs, a.corrupt, image_size=a.image_size, seed=a.seed)
    elif a.format == "obelics":
        expected = write_obelics_parquet(a.out, a.docs, image_size=a.image_size, seed=a.seed)
    else:
        expected = write_video_frames(a.out, a.docs, image_size=a.image_size, seed=a.seed)
    Path(a.out, "expected_tally.json").write_text(json.dumps(expected, indent=1, sort_keys=True))
    print(json.dumps({"format": a.format, "out": a.out, "expected": expected}, sort_keys=True))


if __name__ == "__main__":
    main()
