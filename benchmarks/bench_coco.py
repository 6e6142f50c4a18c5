"""Converter speed: full-scale COCO on a generated COCO-2017-sized training set, and the real Flickr8k.

    .venv/bin/python benchmarks/bench_coco.py [--images 118287] [--captions 5] [--dir /tmp/cocobench]
    .venv/bin/python benchmarks/bench_coco.py --only flickr8k [--flickr8k ../shared/data/flickr8k]  # skipped if absent

Writes COCO-format ``captions_{train,val}2017.json`` and ``instances_{train,val}2017.json`` (118,287
training images, ~592k captions, ~860k instances with polygon segmentations: ~90 MB and ~450 MB, like
the real files) and one JPEG per image (hard links to one generated 640x480 photo-like JPEG of ~150 KB,
which decodes as slowly as a COCO photo), then converts them with ``CocoSource`` in a fresh process
(``order=captions``, which also streams the instances file, and ``order=area``), each ``--repeats`` times,
with ``data.check_images=false``: the annotation work alone, printing the median seconds and peak
resident memory, their ratios to the issue's 120 s target and to a plain ``json.load`` of the captions
file, measured in the same run. Then once ``order=area`` with the image check on (the default), which
decodes every image once: the difference is the check's cost. The files are all one inode, so this
measures decoding, not reading 18 GB from disk.
Then ``data=flickr8k`` on ``../shared/data/flickr8k`` (8,000 photos, Karpathy's JSON, the vocabulary
file, the image check on) the same way.
Not a unit test: run it by hand (``make bench``) after changing the converter.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tagrank.data.sources.normalize import COCO_SYNONYMS

CATEGORIES = list(COCO_SYNONYMS)
FLICKR8K = Path(__file__).resolve().parents[2] / "shared" / "data" / "flickr8k"
TARGET_S = 120  # the issue: the full COCO 2017 train set in under 2 minutes
TEMPLATE = "photo.jpg"  # every generated image is a hard link to this one
FILLER = "a an the of on in with next to near and is are sitting standing holding large small white red two".split()


def caption(rng: random.Random, names: list[str]) -> str:
    words = [rng.choice(("A", "The", "Two", "Some"))]
    for name in rng.sample(names, k=min(len(names), rng.randint(1, 3))):
        words += [rng.choice(FILLER), rng.choice([name, *COCO_SYNONYMS[name]] or [name])]
        words += rng.sample(FILLER, k=rng.randint(1, 3))
    return " ".join(words) + "."


def photo(path: Path) -> None:
    """A 640x480 JPEG with a COCO photo's size (~150 KB) and decoding time (noise, slightly blurred)."""
    from PIL import Image, ImageFilter

    channels = [Image.effect_noise((640, 480), 60).filter(ImageFilter.GaussianBlur(0.8)) for _ in range(3)]
    Image.merge("RGB", channels).save(path, quality=90)


def write_split(root: Path, subset: str, n_images: int, n_captions: int, first_id: int, rng: random.Random) -> None:
    """Streams the two JSON files (bounded memory) and links one JPEG per image."""
    folder = root / f"{subset}2017"
    folder.mkdir(parents=True, exist_ok=True)
    ann = root / "annotations"
    ann.mkdir(exist_ok=True)
    info = '"info": {"description": "generated COCO-format benchmark", "year": 2017}, "licenses": []'
    images = []
    for k in range(n_images):
        image_id = first_id + k
        name = f"{image_id:012d}.jpg"
        (folder / name).unlink(missing_ok=True)
        try:
            os.link(root / TEMPLATE, folder / name)
        except OSError:  # a file system without hard links
            shutil.copyfile(root / TEMPLATE, folder / name)
        images.append((image_id, name))
    with open(ann / f"instances_{subset}2017.json", "w") as inst, open(ann / f"captions_{subset}2017.json", "w") as cap:
        for f in (inst, cap):
            f.write("{" + info + ', "images": [')
            f.write(",".join(json.dumps({"license": 3, "file_name": n, "coco_url": f"http://images.cocodataset.org/"
                                         f"{subset}2017/{n}", "height": 480, "width": 640,
                                         "date_captured": "2013-11-14 11:18:45", "id": i}) for i, n in images))
            f.write('], "annotations": [')
        ann_id, first_inst, first_cap = 1, True, True
        for image_id, _ in images:
            present = rng.sample(range(len(CATEGORIES)), k=rng.randint(1, 5))
            for c in present:
                for _ in range(rng.choice((1, 1, 2, 3, 4))):
                    pts = ",".join(f"{rng.uniform(0, 640):.2f}" for _ in range(60))
                    inst.write(("" if first_inst else ",") + f'{{"segmentation": [[{pts}]], "area": {rng.uniform(10, 9e4):.4f}, '
                               f'"iscrowd": 0, "image_id": {image_id}, "bbox": [1.0, 2.0, 3.0, 4.0], '
                               f'"category_id": {c + 1}, "id": {ann_id}}}')
                    first_inst, ann_id = False, ann_id + 1
            names = [CATEGORIES[c] for c in present]
            for _ in range(n_captions):
                cap.write(("" if first_cap else ",") + json.dumps({"image_id": image_id, "id": ann_id, "caption": caption(rng, names)}))
                first_cap, ann_id = False, ann_id + 1
        inst.write('], "categories": [' + ",".join(json.dumps({"supercategory": "x", "id": i + 1, "name": n})
                                                   for i, n in enumerate(CATEGORIES)) + "]}")
        cap.write("]}")


def child(args: list[str]) -> tuple[str, float, float]:
    """Run this script's ``--run`` mode in a fresh process: its message, seconds and peak RSS in MiB."""
    out = subprocess.run([sys.executable, __file__, "--run", *args], capture_output=True, text=True, check=True).stdout
    message, seconds, peak = out.strip().rsplit("|", 2)
    return message, float(seconds), float(peak)


def measure(what: str, root: Path, tmp: str, repeats: int) -> tuple[str, float, float]:
    """Median seconds and peak MiB over ``repeats`` fresh processes (each converting into a fresh cache)."""
    runs = [child([what, str(root), str(Path(tmp) / f"cache-{what}-{i}")]) for i in range(repeats)]
    return runs[0][0], statistics.median(r[1] for r in runs), statistics.median(r[2] for r in runs)


def run(what: str, root: str, out: str) -> None:
    start = time.perf_counter()
    if what == "json.load":
        with open(Path(root) / "annotations" / "captions_train2017.json") as f:
            message = f"{len(json.load(f)['annotations'])} captions loaded"
    elif what == "flickr8k-json.load":
        with open(Path(root) / "dataset_flickr8k.json") as f:
            message = f"{len(json.load(f)['images'])} images loaded"
    else:
        from tagrank.data.sources.captions import CaptionsSource
        from tagrank.data.sources.coco import CocoSource
        from tagrank.data.sources.base import ensure_built

        if what == "flickr8k":
            source = CaptionsSource(root=root, annotations="dataset_flickr8k.json", vocabulary="vocabulary.txt")
        else:
            order, _, images = what.partition("+")
            source = CocoSource(root=root, order=order, check_images=bool(images))
        folder = ensure_built(source, Path(out))
        with open(folder / "manifest.jsonl") as f:
            message = f"{sum(1 for _ in f)} records"
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print(f"{message}|{time.perf_counter() - start:.2f}|{peak:.0f}")


def figure(value: float, unit: str, baseline: float, target: float | None = None) -> dict:
    """One figure as ``make bench`` records it (results/bench.json)."""
    return {"value": value, "unit": unit, "baseline": baseline, "ratio": round(value / baseline, 3),
            "target": None if target is None else f"< {target:.0f} {unit}", "ok": None if target is None else value < target}


def coco(a: argparse.Namespace, tmp: str) -> dict[str, dict]:
    """Generate the COCO-sized files (once, into --dir if given) and time the two orders against json.load."""
    root = Path(a.dir or tmp)
    if not (root / "annotations" / "captions_train2017.json").is_file() or not (root / TEMPLATE).is_file():
        start, rng = time.perf_counter(), random.Random(0)
        photo(root / TEMPLATE)
        write_split(root, "train", a.images, a.captions, 1, rng)
        write_split(root, "val", a.val_images, a.captions, 10_000_000, rng)
        print(f"generated in {time.perf_counter() - start:.0f} s: " + ", ".join(
            f"{p.name} {p.stat().st_size / 2**20:.0f} MB" for p in sorted((root / "annotations").iterdir())))
    message, base_s, base_mb = measure("json.load", root, tmp, a.repeats)
    print(f"json.load(captions_train2017.json), for comparison: {message}; median {base_s:.1f} s, "
          f"peak {base_mb:.0f} MiB ({a.repeats} runs)")
    seconds, figures = {}, {}
    for order in ("captions", "area"):
        message, secs, mb = measure(order, root, tmp, a.repeats)
        seconds[order] = secs
        figures[f"coco_{order}"] = figure(secs, "s", base_s, TARGET_S * a.images / 118_287)  # the target, scaled
        figures[f"coco_{order}_peak"] = figure(mb, "MiB", base_mb)
        print(f"CocoSource order={order}: {message}; median {secs:.1f} s ({secs / TARGET_S:.2f} x the {TARGET_S} s "
              f"target, {secs / base_s:.2f} x json.load), peak {mb:.0f} MiB ({mb / base_mb:.2f} x json.load; "
              f"process total, with imports; {a.repeats} runs; data.check_images=false)")
    message, checked, mb = measure("area+images", root, tmp, 1)
    n, added = int(message.split()[0]), checked - seconds["area"]
    print(f"CocoSource order=area with data.check_images=true: {message}; {checked:.1f} s, peak {mb:.0f} MiB (1 run): "
          f"decoding the {n} images once adds {added:.1f} s, {added / n * 1000:.2f} ms an image "
          f"with {min(8, os.cpu_count() or 1)} threads")
    figures["coco_image_check"] = figure(checked, "s", seconds["area"])
    return figures


def flickr8k(a: argparse.Namespace, tmp: str) -> dict[str, dict]:
    """The real Flickr8k (../shared) converted, against json.load of its annotation file."""
    if not a.flickr8k.is_dir():
        print(f"Flickr8k: skipped, {a.flickr8k} is absent")
        return {}
    _, base_s, base_mb = measure("flickr8k-json.load", a.flickr8k, tmp, a.repeats)
    message, secs, mb = measure("flickr8k", a.flickr8k, tmp, a.repeats)
    print(f"CaptionsSource data=flickr8k: {message}; median {secs:.1f} s ({secs / base_s:.2f} x json.load of "
          f"dataset_flickr8k.json, {base_s:.1f} s), peak {mb:.0f} MiB ({mb / base_mb:.2f} x json.load's; process total, "
          f"with imports; {a.repeats} runs; data.check_images=true)")
    return {"flickr8k": figure(secs, "s", base_s), "flickr8k_peak": figure(mb, "MiB", base_mb)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=118_287)
    p.add_argument("--val-images", type=int, default=5_000)
    p.add_argument("--captions", type=int, default=5)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--only", choices=("coco", "flickr8k"), default=None, help="run one of the two benchmarks")
    p.add_argument("--flickr8k", type=Path, default=FLICKR8K, help="the Flickr8k folder (default: %(default)s)")
    p.add_argument("--dir", default=None, help="keep the generated data here (default: a temp folder, deleted)")
    p.add_argument("--run", nargs=3, metavar=("WHAT", "ROOT", "OUT"), help=argparse.SUPPRESS)
    p.add_argument("--json", default=None, help="also write the figures here, as make bench does ({name: {value, ...}})")
    a = p.parse_args()
    if a.run:
        run(*a.run)
        return
    figures = {}
    with tempfile.TemporaryDirectory() as tmp:
        if a.only != "flickr8k":
            figures.update(coco(a, tmp))
        if a.only != "coco":
            figures.update(flickr8k(a, tmp))
    if a.json:
        Path(a.json).write_text(json.dumps(figures, indent=1) + "\n")


if __name__ == "__main__":
    main()
