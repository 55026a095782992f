"""Writes the dummy_data/ folders of the real-file builders in their official layouts (tiny random images).

Run from the repository root: python data/make_dummy_data.py (deterministic: rng seed 0).
"""
import io, json, tarfile
import numpy as np
from PIL import Image
from pathlib import Path

D = Path(__file__).resolve().parent  # the data/ folder
rng = np.random.default_rng(0)


def img(path, fmt="JPEG", size=(12, 10)):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    a = (rng.random((size[1], size[0], 3)) * 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, fmt, quality=70) if fmt == "JPEG" else Image.fromarray(a).save(buf, fmt)
    path.write_bytes(buf.getvalue())
    return buf.getvalue()


def js(path, obj):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=1))


def jsl(path, objs):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(o) + "\n" for o in objs))


def frames(folder, n):
    for f in range(n):
        img(Path(folder) / f"{f:05d}.jpg")


def frame_folders(r, folders, n):
    """n frames in each of r/frames/<folder>/ and the extraction rate, 1 FPS, in r/frames_fps.txt."""
    for folder in folders:
        frames(r / "frames" / folder, n)
    (r / "frames_fps.txt").write_text("1\n")


def csv_splits(r, columns, **rows):
    """r/<split>.csv for each split=rows: the columns' names, then a line per row (no field holds a comma)."""
    for split, table in rows.items():
        (r / f"{split}.csv").write_text("".join(",".join(map(str, row)) + "\n" for row in [columns, *table]))


# interleaved_generic
r = D / "interleaved_generic/dummy_data"
for i in range(4):
    img(r / f"images/{i}.jpg")
jsl(r / "train.jsonl", [{
    "id": "doc0", "chunks": [{"text": "A cat on a mat."}, {"image": "images/0.jpg"}, {"text": "It sleeps."}]
}, {
    "id": "doc1", "chunks": [{"image": "images/1.jpg"}, {"text": "A red bus."}, {"image": "images/2.jpg"},
                             {"text": "Another bus."}]
}, {"id": "doc2", "chunks": [{"text": "Missing picture next."}, {"image": "images/missing.jpg"}, {"text": "The end."}]}
                        ])
jsl(r / "validation.jsonl", [{"id": "doc3", "chunks": [{"text": "A dog."}, {"image": "images/3.jpg"}]}])

# mmc4
r = D / "mmc4/dummy_data"
for n in ("a.jpg", "b.jpg", "c.png"):
    img(r / "images" / n, "PNG" if n.endswith("png") else "JPEG")
jsl(r / "docs/docs_shard_0_v2.jsonl", [{
    "url": "http://x/1", "text_list": ["First sentence.", "Second sentence about a boat.", "Third."], "image_info": [{
        "image_name": "a.jpg", "raw_url": "http://x/a.jpg", "matched_text_index": 1, "matched_sim": 0.31
    }, {"image_name": "b.jpg", "raw_url": "http://x/b.jpg", "matched_text_index": 0, "matched_sim": 0.2}]
}, {
    "url": "http://x/2", "text_list": ["Only text and one picture."],
    "image_info": [{"image_name": "c.png", "raw_url": "http://x/c.png", "matched_text_index": 0, "matched_sim": 0.28}]
}, {
    "url": "http://x/3", "text_list": ["Its image was never downloaded.", "Still text."], "image_info": [{
        "image_name": "gone.jpg", "raw_url": "http://x/gone.jpg", "matched_text_index": 1, "matched_sim": 0.3
    }]
}])

import zipfile
with zipfile.ZipFile(r / "docs/docs_shard_1_v2.jsonl.zip", "w") as z:  # released shards are zipped
    z.writestr(
        zipfile.ZipInfo("docs_shard_1_v2.jsonl", date_time=(2023, 1, 1, 0, 0, 0)),
        json.dumps({
            "url": "http://x/4", "text_list": ["A zipped shard.", "With a picture."], "image_info": [{
                "image_name": "a.jpg", "raw_url": "http://x/a.jpg", "matched_text_index": 1, "matched_sim": 0.3
            }]
        }) + "\n")

# image_text_pairs: files layout + a WebDataset tar; one corrupt image
r = D / "image_text_pairs/dummy_data"
for i in range(2):
    img(r / f"train/00000/00000000{i}.jpg")
    (r / f"train/00000/00000000{i}.txt").write_text(f"a photo number {i}")
(r / "train/00000/000000002.jpg").write_bytes(b"this is not a jpeg")
(r / "train/00000/000000002.txt").write_text("corrupt image")
tar_path = r / "train/shard-00000.tar"
with tarfile.open(tar_path, "w") as tar:
    for i in range(2):
        for name, data in ((f"{i:06d}.jpg", img(r / f".tmp_t{i}.jpg")), (f"{i:06d}.txt", f"tar caption {i}".encode())):
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tar.addfile(ti, io.BytesIO(data))
for t in r.glob(".tmp_t*.jpg"):
    t.unlink()
img(r / "validation/0.png", "PNG")
(r / "validation/0.txt").write_text("a validation pair")

# video_text_frames
r = D / "video_text_frames/dummy_data"
for v in ("clip_a", "clip_b", "clip_c"):
    for f in range(4):
        img(r / f"frames/{v}/{f:05d}.jpg")
jsl(r / "train.jsonl",
    [{"video": "clip_a", "caption": "a man runs", "fps": 2}, {"video": "clip_b", "caption": "a dog jumps", "fps": 2},
     {"video": "clip_missing", "caption": "no frames for this one", "fps": 2}])
jsl(r / "validation.jsonl", [{"video": "clip_c", "caption": "a bird flies", "fps": 2}])

# coco karpathy
r = D / "coco_karpathy/dummy_data"
images = []
for i, (split, folder) in enumerate([("train", "train2014"), ("train", "train2014"), ("restval", "val2014"),
                                     ("val", "val2014"), ("test", "val2014")]):
    fn = f"COCO_{folder}_{i:012d}.jpg"
    img(r / folder / fn)
    images.append({
        "filepath": folder, "filename": fn, "imgid": i, "split": split, "cocoid": i, "sentences": [{
            "raw": f"A picture {i} of something.", "tokens": ["a", "picture"], "imgid": i, "sentid": 5 * i + k
        } for k in range(5)]
    })
js(r / "dataset_coco.json", {"images": images, "dataset": "coco"})

# flickr30k
r = D / "flickr30k/dummy_data"
images = []
for i, split in enumerate(["train", "val", "test"]):
    fn = f"{1000 + i}.jpg"
    img(r / "flickr30k-images" / fn)
    images.append({
        "filename": fn, "imgid": i, "split": split,
        "sentences": [{"raw": f"People {i} in a park.", "tokens": ["people"]}] * 5
    })
js(r / "dataset_flickr30k.json", {"images": images, "dataset": "flickr30k"})


def vqa(r, qfile, afile, split, qs):
    for image_id in {q[0] for q in qs}:
        img(r / f"{split}2014" / f"COCO_{split}2014_{image_id:012d}.jpg")
    js(r / qfile, {"questions": [{"image_id": im, "question": q, "question_id": qid} for im, q, qid, _ in qs]})
    js(
        r / afile, {
            "annotations": [{
                "image_id": im, "question_id": qid, "answer_type": "other", "question_type": "what",
                "multiple_choice_answer": a, "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": k + 1}
                                                         for k in range(10)]
            } for im, q, qid, a in qs]
        })


r = D / "vqav2/dummy_data"
vqa(r, "v2_OpenEnded_mscoco_train2014_questions.json", "v2_mscoco_train2014_annotations.json", "train",
    [(9, "What color is the bus?", 90, "red"), (9, "How many wheels?", 91, "4"), (11, "Is it raining?", 110, "no")])
vqa(r, "v2_OpenEnded_mscoco_val2014_questions.json", "v2_mscoco_val2014_annotations.json", "val",
    [(42, "What animal is this?", 420, "dog"), (42, "Is it sitting?", 421, "yes")])
r = D / "okvqa/dummy_data"
vqa(r, "OpenEnded_mscoco_train2014_questions.json", "mscoco_train2014_annotations.json", "train",
    [(5, "What country is this food from?", 50, "italy"), (6, "What sport uses this?", 60, "tennis")])
vqa(r, "OpenEnded_mscoco_val2014_questions.json", "mscoco_val2014_annotations.json", "val",
    [(7, "Who invented this?", 70, "edison")])

# vizwiz
r = D / "vizwiz/dummy_data"
for split, n in (("train", 2), ("val", 1)):
    recs = []
    for i in range(n):
        name = f"VizWiz_{split}_{i:08d}.jpg"
        img(r / split / name)
        recs.append({
            "image": name, "question": "What is this?",
            "answers": [{"answer": "soup can", "answer_confidence": "yes"}] * 10, "answer_type": "other",
            "answerable": 1
        })
    js(r / "Annotations" / f"{split}.json", recs)

# textvqa
r = D / "textvqa/dummy_data"
for split, n in (("train", 2), ("val", 1)):
    data = []
    for i in range(n):
        image_id = f"{split}{i:04x}"
        img(r / "train_images" / f"{image_id}.jpg")
        data.append({
            "question": "what brand is this?", "image_id": image_id, "image_classes": ["Bottle"],
            "question_id": 100 * (split == "val") + i, "answers": ["coca cola"] * 10, "set_name": split
        })
    js(r / f"TextVQA_0.5.1_{split}.json",
       {"dataset_type": split, "dataset_name": "textvqa", "dataset_version": "0.5.1", "data": data})

# hateful memes
r = D / "hateful_memes/dummy_data"
recs = {"train": [], "dev_seen": []}
for i, split in enumerate(["train", "train", "train", "dev_seen", "dev_seen"]):
    mid = 10000 + i
    img(r / "img" / f"{mid}.png", "PNG")
    recs[split].append({"id": mid, "img": f"img/{mid}.png", "label": i % 2, "text": f"meme text {i}"})
for s, v in recs.items():
    jsl(r / f"{s}.jsonl", v)

# msvd-qa
r = D / "msvd_qa/dummy_data"
frame_folders(r, [f"vid{vid}" for vid in (1, 2, 3, 4)], 5)
js(r / "train_qa.json", [{"answer": "man", "id": 0, "question": "who is running?", "video_id": 1}, {
    "answer": "run", "id": 1, "question": "what is the man doing?", "video_id": 1
}, {"answer": "dog", "id": 2, "question": "what jumps?", "video_id": 2}])
js(r / "val_qa.json", [{"answer": "cat", "id": 3, "question": "what is sleeping?", "video_id": 3}])
js(r / "test_qa.json", [{"answer": "car", "id": 4, "question": "what is driving?", "video_id": 4}])

# vatex
r = D / "vatex/dummy_data"
frame_folders(r, ("AbC_000010_000020", "XyZ_000000_000010", "QqQ_000005_000015"), 5)
js(r / "vatex_training_v1.0.json",
   [{"videoID": v, "enCap": [f"caption {k} of {v}" for k in range(10)], "chCap": ["x"] * 10}
    for v in ("AbC_000010_000020", "XyZ_000000_000010")])
js(r / "vatex_validation_v1.0.json",
   [{"videoID": "QqQ_000005_000015", "enCap": ["a person cooks"] * 10, "chCap": ["x"] * 10}])

# ---- the paper's other held-out benchmarks (Table 1) -------------------------------------------------

# visdial: 3-round dialogs (10 in the release), 100 answer options per round, dense relevance for one val round
r = D / "visdial/dummy_data"
img(r / "images/train2014/COCO_train2014_000000000009.jpg")
img(r / "images/val2014/COCO_val2014_000000000011.jpg")
img(r / "images/VisualDialog_val2018/VisualDialog_val2018_000000185565.jpg")
img(r / "images/VisualDialog_val2018/VisualDialog_val2018_000000284024.jpg")
qs = ["is it sunny", "how many people are there", "what color is the car", "is there a dog"]
ans = ["yes", "no", "two", "red"] + [f"answer {k}" for k in range(96)]


def rounds(pairs, shift):
    return [{
        "question": q, "answer": a, "answer_options": [(a + k + shift) % 100
                                                       for k in range(100)], "gt_index": (-shift) % 100
    } for q, a in pairs]


js(
    r / "visdial_1.0_train.json", {
        "version": "1.0", "split": "train", "data": {
            "questions": qs, "answers": ans, "dialogs": [{
                "image_id": 9, "caption": "a car parked on a street", "dialog": rounds([(0, 0), (2, 3), (1, 2)], 0)
            }, {"image_id": 11, "caption": "a dog in a park", "dialog": rounds([(3, 0), (1, 1), (0, 1)], 5)}]
        }
    })
js(
    r / "visdial_1.0_val.json", {
        "version": "1.0", "split": "val", "data": {
            "questions": qs, "answers": ans, "dialogs": [{
                "image_id": 185565, "caption": "two people on a beach", "dialog": rounds([(0, 0), (1, 2), (3, 1)], 0)
            }, {"image_id": 284024, "caption": "a red car", "dialog": rounds([(2, 3), (0, 1)], 0)}]
        }
    })
js(r / "visdial_1.0_val_dense_annotations.json",
   [{"image_id": 185565, "round_id": 2, "gt_relevance": [1.0, 0.5] + [0.0] * 97 + [0.25]}])

# youcook2: recipe videos with annotated segments (seconds) and their frames at 1 FPS
r = D / "youcook2/dummy_data"
frame_folders(r, ("GLd3aX16zBg", "xHr8X2Wpmno"), 8)
js(
    r / "youcookii_annotations_trainval.json", {
        "database": {
            "GLd3aX16zBg": {
                "duration": 8.0, "subset": "training", "recipe_type": "113",
                "video_url": "https://www.youtube.com/watch?v=GLd3aX16zBg", "annotations": [{
                    "segment": [0, 3], "id": 0, "sentence": "spread margarine on two slices of white bread"
                }, {"segment": [3, 7], "id": 1, "sentence": "place a slice of cheese on the bread"}]
            }, "xHr8X2Wpmno": {
                "duration": 8.0, "subset": "validation", "recipe_type": "101",
                "video_url": "https://www.youtube.com/watch?v=xHr8X2Wpmno",
                "annotations": [{"segment": [2, 6], "id": 0, "sentence": "add the chopped onions to the pan"}]
            }
        }
    })

# msrvtt-qa
r = D / "msrvtt_qa/dummy_data"
frame_folders(r, [f"video{v}" for v in range(4)], 4)
js(r / "train_qa.json",
   [{"answer": "cartoon", "category_id": 3, "id": 0, "question": "what is a cartoon doing?", "video_id": 0},
    {"answer": "dance", "category_id": 3, "id": 1, "question": "what are the people doing?", "video_id": 1}])
js(r / "val_qa.json", [{"answer": "man", "category_id": 9, "id": 2, "question": "who is talking?", "video_id": 2}])
js(r / "test_qa.json", [{"answer": "car", "category_id": 4, "id": 3, "question": "what is shown?", "video_id": 3}])

# ivqa: clips of longer videos, five answers each
r = D / "ivqa/dummy_data"
frame_folders(r, ("5sKmRk8o7YE", "Rj3Hw1Vd9Jc", "q8UXlB0Y2Hs"), 8)
csv_splits(
    r, ("video_id", "start", "end", "question", "answer1", "answer2", "answer3", "answer4", "answer5"), train=[
        ("5sKmRk8o7YE", 0, 4, "what is the man cutting", "onion", "onion", "onions", "onion", "carrot"),
        ("Rj3Hw1Vd9Jc", 2, 6, "what tool is used", "knife", "knife", "knife", "blade", "knife")
    ], val=[("q8UXlB0Y2Hs", 1, 5, "what is in the bowl", "flour", "flour", "flour", "sugar", "flour")],
    test=[("q8UXlB0Y2Hs", 3, 8, "what does she pour", "milk", "milk", "water", "milk", "milk")])

# rareact: three (verb, noun) classes; positives, hard negatives and negatives (as in the metric test)
r = D / "rareact/dummy_data"
frame_folders(r, ("7frRY7aGwMU", "aBcD3fGh1jK", "Zz9yXw8vU7t", "Qq1wE2rT3yU"), 6)
(r / "rareact.csv").write_text(
    "id,video_id,start,end,class_id,verb,noun,annotation\n"
    "0,7frRY7aGwMU,0,2,0,cut,laptop,1\n1,7frRY7aGwMU,3,5,0,cut,laptop,1\n2,aBcD3fGh1jK,0,3,0,cut,laptop,0\n"
    "3,Zz9yXw8vU7t,1,4,1,cut,bread,1\n4,Qq1wE2rT3yU,0,2,1,cut,bread,2\n5,Qq1wE2rT3yU,2,5,2,wash,laptop,1\n")

# nextqa (NExT-OE): videos found through map_vid_vidorID.json
r = D / "nextqa/dummy_data"
frame_folders(r, ("1001/4010069381", "1002/3233088823", "1003/8783897632"), 5)
js(r / "map_vid_vidorID.json",
   {"4010069381": "1001/4010069381", "3233088823": "1002/3233088823", "8783897632": "1003/8783897632"})
csv_splits(
    r, ("video", "frame_count", "width", "height", "question", "answer", "qid", "type"), train=[
        (4010069381, 369, 640, 480, "what are the people doing in the video", "performing", 9, "TC"),
        (4010069381, 369, 640, 480, "why does the lady walk away", "help man", 3, "CW")
    ], val=[(3233088823, 462, 640, 480, "how is the bulldozer controlled", "from the drivers cabin", 3, "CH")],
    test=[(8783897632, 974, 640, 360, "how many people are filmed", "two", 9, "DC")])

# star: Charades clips, four choices (no test file here: its split is left out)
r = D / "star/dummy_data"
frame_folders(r, ("6H78U", "YSKX3"), 6)


def star(qid, q, vid, s, e, choices, answer):
    return {
        "question_id": qid, "question": q, "video_id": vid, "start": s, "end": e, "answer": answer,
        "choices": [{"choice_id": k, "choice": c, "choice_program": []} for k, c in enumerate(choices)],
        "situations": {}
    }


js(r / "STAR_train.json", [
    star("Interaction_T1_13", "Which object was tidied up by the person?", "6H78U", 0.5, 4.2,
         ["The closet/cabinet.", "The blanket.", "The clothes.", "The table."], "The clothes."),
    star("Sequence_T1_6", "What did the person do after opening the door?", "6H78U", 1.0, 5.0,
         ["Sat on the bed.", "Took the cup.", "Closed the door.", "Put down the book."], "Took the cup.")
])
js(r / "STAR_val.json", [
    star("Prediction_T1_3", "What will the person do next?", "YSKX3", 0.0, 3.5,
         ["Open the laptop.", "Eat the sandwich.", "Throw the towel.", "Wash the dish."], "Eat the sandwich.")
])
print("held-out benchmarks done")
print("done")
