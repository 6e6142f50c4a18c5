"""200 seeded corruptions of the small fixtures: a correct result or a one-line TagrankError, nothing else.

Each case damages one file (cut short at a random byte, 1-4 bytes changed, or one field removed) of a
converter's input (PASCAL tag file and XML, LabelMe XML, COCO captions/instances JSON, a box file, a
Karpathy caption JSON and its tag vocabulary) or of
a cache (manifest, vocabulary, features, or their ``.check`` files), then runs the real loader:

* a converter, under ``data.on_error=raise`` and ``skip``, must stop with a one-line ``TagrankError``,
  or give the fixture's records, or (when the damaged file is still well-formed XML/JSON/lines) records
  that differ only for the images that file annotates, with every image it lost counted (no tags,
  skipped). A changed letter in a tag name is still a valid annotation; a lost image nobody counts, a
  different list for an image the file does not describe, or a parse of a broken file are failures;
* a cache must be rebuilt to exactly the clean records, vocabulary and features, with one warning
  naming the damaged file (none when the damage is in a part that does not matter, such as the file
  name inside a ``.check``), and reading the damaged manifest or vocabulary directly (a user's
  ``out=`` folder) must end in a one-line error.

Any other exception fails the case with its traceback. All 200 run in the default suite (about 11 s of
CPU time, 20-30 s on a busy 2-core machine).
"""

from __future__ import annotations

import io
import json
import logging
import math
import random
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from PIL import Image

from tagrank.data import cache
from tagrank.data.sources.boxes import BoxesSource
from tagrank.data.sources.captions import CaptionsSource
from tagrank.data.sources.coco import CocoSource
from tagrank.data.sources.raw import SKIPPED
from tagrank.data.features import feature_cache_path
from tagrank.data.images import load_image
from tagrank.data.sources.labelme import LabelMeSource
from tagrank.data.sources.pascal07 import Pascal07Source
from tagrank.data.records import MANIFEST, VOCAB, Vocabulary, read_manifest
from tagrank.errors import TagrankError

from .test_captions import write_set
from .test_converters import write_boxes, write_coco, write_labelme, write_voc
from .test_integrity import TinyBackbone, features, synthetic_dm

N_CASES = 200
ALL = "all"  # the damaged file describes every image (a category list)


# --- damage ----------------------------------------------------------------------------------------

def cut(data: bytes, rng: random.Random, kind: str) -> bytes:
    return data[: rng.randrange(len(data))]


def flip(data: bytes, rng: random.Random, kind: str) -> bytes:
    """1-4 bytes changed: any new value, or one low bit flipped (text stays ASCII: a digit or letter changes)."""
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        out[rng.randrange(len(out))] ^= rng.choice([rng.randrange(1, 256), 1 << rng.randrange(7)])
    return bytes(out)


def drop_field(data: bytes, rng: random.Random, kind: str) -> bytes:
    """Remove one element (XML), one key (JSON, a manifest line), one word (a line format), one entry (features)."""
    if kind == "xml":
        root = ET.fromstring(data)
        parents = [(p, c) for p in root.iter() for c in p]
        parent, child = rng.choice(parents)
        parent.remove(child)
        return ET.tostring(root)
    if kind == "json":
        doc = json.loads(data)
        dicts = [d for d in walk(doc) if isinstance(d, dict) and d]
        d = rng.choice(dicts)
        del d[rng.choice(sorted(d))]
        return json.dumps(doc).encode()
    if kind == "pt":
        obj = torch.load(io.BytesIO(data), weights_only=True)
        del obj[rng.choice(sorted(obj))]
        buf = io.BytesIO()
        torch.save(obj, buf)
        return buf.getvalue()
    lines = data.decode().splitlines(keepends=True)
    i = rng.choice([i for i, line in enumerate(lines) if line.strip()])
    if kind == "jsonl":
        record = json.loads(lines[i])
        del record[rng.choice(sorted(record))]
        lines[i] = json.dumps(record) + "\n"
    else:
        words = lines[i].split()
        del words[rng.randrange(len(words))]
        lines[i] = " ".join(words) + "\n"  # the tag file's tab goes with its word: then it must be reported
    return "".join(lines).encode()


def walk(value):
    yield value
    children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else []
    for child in children:
        yield from walk(child)


DAMAGE = [cut, flip, drop_field]


# --- the converters' fixtures ----------------------------------------------------------------------

class Fixture:
    """A fixture folder, the source that converts it, and what any of its files may change when damaged."""

    def __init__(self, root: Path, make: Callable[[str], object], files: list[str], kind: str,
                 touched: Callable[[str, bytes, bytes], tuple[set, bool]]) -> None:
        self.root, self.make, self.files, self.kind, self.touched = root, make, files, kind, touched
        self.clean: dict[str, tuple[dict, dict]] = {}

    def convert(self, on_error: str, out: Path) -> tuple[dict, dict]:
        out.mkdir(parents=True, exist_ok=True)
        records = self.make(on_error).build(out)
        left = json.loads((out / SKIPPED).read_text())
        return {r.image: (r.tags, r.split) for r in records}, left


def xml_well_formed(data: bytes) -> bool:
    try:
        ET.fromstring(data)
        return True
    except ET.ParseError:
        return False


def pascal_xml_touched(name: str, clean: bytes, bad: bytes) -> tuple[set, bool]:
    """A VOC XML annotates the image of its file name: only that one may change."""
    return {f"VOCdevkit/VOC2007/JPEGImages/{Path(name).stem}.jpg"}, xml_well_formed(bad)



def labelme_touched(images: list[str]) -> Callable[[str, bytes, bytes], tuple[set, bool]]:
    # the image the file annotated, and any other image the damaged file now names
    def touched(name: str, clean: bytes, bad: bytes) -> tuple[set, bool]:
        own = {i for i in images if Path(i).name.encode() in clean}
        return own | {i for i in images if Path(i).name.encode() in bad}, xml_well_formed(bad)

    return touched


def lines(data: bytes) -> list[str] | None:
    try:
        return [line for line in data.decode("utf-8").splitlines() if line.strip()]
    except UnicodeDecodeError:
        return None


def tag_file_touched(name: str, clean: bytes, bad: bytes) -> tuple[set, bool]:
    """The images named on the lines that changed (before and after the damage); every line needs its tab."""
    a, b = Counter(lines(clean)), Counter(lines(bad) or [])
    ids = {line.split("\t")[0].strip() for line in (a - b) + (b - a)}
    well_formed = lines(bad) is not None and all("\t" in line for line in lines(bad))
    return {f"VOCdevkit/VOC2007/JPEGImages/{Path(i).stem}.jpg" for i in ids}, well_formed


def box_line(line: str) -> bool:
    words = line.split()
    words = words[:-1] if words[-1:] == ["difficult"] else words
    try:
        return len(words) >= 5 and all(math.isfinite(float(w)) for w in words[-4:])
    except ValueError:
        return False


def box_file_touched(name: str, clean: bytes, bad: bytes) -> tuple[set, bool]:
    """A box file annotates the image of its name: only that one may change; every line needs 4 numbers."""
    found = lines(bad)
    return {f"images/{Path(name).stem}.jpg"}, found is not None and all(box_line(line) for line in found)


def coco_touched(name: str, clean: bytes, bad: bytes) -> tuple[set, bool]:
    """The images whose entries or annotations differ between the clean and the damaged JSON."""
    try:
        a, b = json.loads(clean), json.loads(bad)
    except (UnicodeDecodeError, ValueError):
        return set(), False
    subset = "train2017" if "train" in name else "val2017"
    files = {im["id"]: im["file_name"] for im in a["images"]}
    if not isinstance(b, dict) or a.keys() != b.keys() or any(len(a[k]) != len(b[k]) for k in a if isinstance(a[k], list)):
        return {ALL}, True
    if a.get("categories") != b.get("categories"):
        return {ALL}, True
    touched = set()
    for x, y in zip(a["images"], b["images"]):
        if x != y:
            touched |= {files.get(e.get("id")) for e in (x, y) if isinstance(e, dict)}
            touched |= {e.get("file_name") for e in (x, y) if isinstance(e, dict)}
    for x, y in zip(a["annotations"], b["annotations"]):
        if x != y:
            touched |= {files.get(e.get("image_id")) for e in (x, y) if isinstance(e, dict) and isinstance(e.get("image_id"), int)}
    return {f"{subset}/{f}" for f in touched if isinstance(f, str)}, True


def karpathy_touched(name: str, clean: bytes, bad: bytes) -> tuple[set, bool]:
    """The photos whose entries differ between the clean and the damaged Karpathy JSON (all of them when
    its shape changed)."""
    try:
        a, b = json.loads(clean), json.loads(bad)
    except (UnicodeDecodeError, ValueError):
        return set(), False
    if not isinstance(b, dict) or a.keys() != b.keys() or not isinstance(b.get("images"), list) \
            or len(a["images"]) != len(b["images"]):
        return {ALL}, True
    touched = set()
    for x, y in zip(a["images"], b["images"]):
        if x != y:
            touched |= {str(Path(e.get("filepath") or "", e.get("filename") or "")) for e in (x, y)
                        if isinstance(e, dict) and isinstance(e.get("filepath", ""), str)
                        and isinstance(e.get("filename", ""), str)}
    return touched, True


def vocabulary_touched(name: str, clean: bytes, bad: bytes) -> tuple[set, bool]:
    """A vocabulary decides every photo's list."""
    return {ALL}, lines(bad) is not None


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory) -> dict[str, Fixture]:
    base = tmp_path_factory.mktemp("fuzz")
    write_voc(base / "voc")
    write_labelme(base / "labelme")
    write_coco(base / "coco")
    write_boxes(base / "boxes")
    write_set(base / "captions")
    voc = "VOCdevkit/VOC2007/Annotations"
    xmls = sorted(p.relative_to(base / "labelme").as_posix() for p in (base / "labelme").rglob("*.xml"))
    labelme_images = sorted(p.relative_to(base / "labelme").as_posix() for p in (base / "labelme").rglob("*.jpg"))
    made = {
        "pascal tags": Fixture(base / "voc", lambda e: Pascal07Source(root=str(base / "voc"), tags="tags.txt",
                                                                       split=[4, 1, 1], on_error=e),
                               ["tags.txt"], "words", tag_file_touched),
        "pascal xml": Fixture(base / "voc", lambda e: Pascal07Source(root=str(base / "voc"), order="area",
                                                                      split=[4, 1, 1], on_error=e),
                              sorted(f"{voc}/{p.name}" for p in (base / "voc" / voc).glob("*.xml")), "xml",
                              pascal_xml_touched),
        "labelme": Fixture(base / "labelme", lambda e: LabelMeSource(root=str(base / "labelme"), split=[1, 1, 1],
                                                                      on_error=e),
                           xmls, "xml", labelme_touched(labelme_images)),
        **{f"coco {kind}": Fixture(base / "coco", lambda e: CocoSource(root=str(base / "coco"), val_fraction=0.25,
                                                                       on_error=e),
                                   [f"annotations/{kind}_{s}2017.json" for s in ("train", "val")], "json", coco_touched)
           for kind in ("captions", "instances")},
        **{f"captions {what}": Fixture(base / "captions", lambda e: CaptionsSource(
            root=str(base / "captions"), annotations="dataset_test.json", vocabulary="vocabulary.txt", on_error=e),
            [file], kind, touched) for what, file, kind, touched in [
                ("json", "dataset_test.json", "json", karpathy_touched),
                ("vocabulary", "vocabulary.txt", "words", vocabulary_touched)]},
        "boxes": Fixture(base / "boxes", lambda e: BoxesSource(root=str(base / "boxes"), split=[1, 0, 1], on_error=e),
                         ["ground-truth/a.txt", "ground-truth/b.txt"], "words", box_file_touched),
    }
    for name, fx in made.items():
        for on_error in ("raise", "skip"):
            fx.clean[on_error] = fx.convert(on_error, base / "clean" / name / on_error)
    return made


def check_converter(fx: Fixture, name: str, damage, rng: random.Random, out: Path) -> list[str]:
    path = fx.root / name
    clean = path.read_bytes()
    bad = damage(clean, rng, fx.kind)
    touched, well_formed = fx.touched(name, clean, bad)
    outcomes = []
    path.write_bytes(bad)
    try:
        for on_error in ("raise", "skip"):
            want, want_left = fx.clean[on_error]
            try:
                got, left = fx.convert(on_error, out / on_error)
            except TagrankError as err:
                assert str(err) and "\n" not in str(err), repr(str(err))
                outcomes.append("error")
                continue
            if got == want:
                outcomes.append("same")
                continue
            # with the same images, the splits are the same too; else they are drawn again, so compare tags
            key = (lambda v: v) if got.keys() == want.keys() else (lambda v: v and v[0])
            changed = {i for i in got.keys() | want.keys() if key(got.get(i)) != key(want.get(i))}
            lost = want.keys() - got.keys()
            assert ALL in touched or changed <= touched, f"images the damage did not touch changed: {changed - touched}"
            # a damaged file that no longer parses may lose images, or under skip leave out a counted record
            skipped = left["skipped_total"] > want_left["skipped_total"]
            assert well_formed or changed == lost or (on_error == "skip" and skipped), \
                f"a file that no longer parses changed {changed - lost} (data.on_error={on_error})"
            # an image may also be gained (its only object was marked deleted): it leaves the no-tag count
            counted = left["no_tags"] - want_left["no_tags"] + left["skipped_total"] - want_left["skipped_total"]
            assert len(lost) <= counted + len(got.keys() - want.keys()), f"{len(lost)} images lost, {counted} counted"
            outcomes.append("different")
    finally:
        path.write_bytes(clean)
    return outcomes


# --- the caches --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def caches(tmp_path_factory):
    """A built synthetic dataset with its vocabulary and features, and the clean bytes of each cache file."""
    cache_dir = tmp_path_factory.mktemp("fuzz-cache")
    dm, backbone = synthetic_dm(cache_dir), TinyBackbone()
    clean = features(dm, backbone)
    files = {"manifest": (dm.dataset_dir / MANIFEST, "jsonl"), "vocab": (dm.dataset_dir / VOCAB, "json"),
             "features": (feature_cache_path(cache_dir, dm.name, "tiny", "d0", 32), "pt")}
    files.update({f"{k}.check": (cache.check_path(p), "json") for k, (p, _) in list(files.items())})
    return {"dir": cache_dir, "backbone": backbone, "records": dm.records, "vocab": dm.vocab.tags, "features": clean,
            "files": {k: (p, kind, p.read_bytes()) for k, (p, kind) in files.items()}}


def check_cache(caches: dict, name: str, damage, rng: random.Random, caplog) -> list[str]:
    for path, _, data in caches["files"].values():  # every case starts from the clean caches
        path.write_bytes(data)
    path, kind, clean = caches["files"][name]
    bad = damage(clean, rng, kind)
    path.write_bytes(bad)
    data_file = Path(str(path).removesuffix(cache.SUFFIX))
    outcomes = []
    if name in ("manifest", "vocab"):  # read directly, as a user's out= folder is: a one-line error
        with pytest.raises(cache.Unverified) as err:
            read_manifest(data_file) if name == "manifest" else Vocabulary.load(data_file)
        assert "\n" not in str(err.value) and str(data_file) in str(err.value)
        outcomes.append("error")
    caplog.clear()
    dm = synthetic_dm(caches["dir"])
    got = features(dm, caches["backbone"])
    assert dm.records == caches["records"] and dm.vocab.tags == caches["vocab"] and torch.equal(got, caches["features"])
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert all(str(data_file) in w and "\n" not in w for w in warnings), warnings
    assert len(warnings) <= 1 if name.endswith(".check") else len(warnings) == 1, warnings
    outcomes.append("rebuilt" if warnings else "same")
    return outcomes


# --- the cases ---------------------------------------------------------------------------------------

TARGETS = ["pascal tags", "pascal xml", "labelme", "coco captions", "coco instances", "boxes", "captions json",
           "captions vocabulary",
           "manifest", "vocab", "features", "manifest.check", "vocab.check", "features.check"]


def case(i: int) -> tuple[str, Callable, random.Random]:
    rng = random.Random(f"fuzz-{i}")
    return TARGETS[i % len(TARGETS)], DAMAGE[(i // len(TARGETS)) % len(DAMAGE)], rng


@pytest.mark.parametrize("i", range(N_CASES))
def test_damaged_fixture(i, fixtures, caches, tmp_path, caplog):
    target, damage, rng = case(i)
    caplog.set_level(logging.WARNING)
    if target in fixtures:
        fx = fixtures[target]
        outcomes = check_converter(fx, rng.choice(fx.files), damage, rng, tmp_path)
    else:
        outcomes = check_cache(caches, target, damage, rng, caplog)
    assert outcomes


# --- the same file as another editor saves it: a BOM, CRLF line ends ------------------------------------

def with_bom(data: bytes) -> bytes:
    return b"\xef\xbb\xbf" + data


def with_crlf(data: bytes) -> bytes:
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


RESAVED = {"bom": with_bom, "crlf": with_crlf, "bom+crlf": lambda data: with_bom(with_crlf(data))}


@pytest.mark.parametrize("how", list(RESAVED))
@pytest.mark.parametrize("target", TARGETS[:8])
def test_a_file_resaved_with_a_bom_or_crlf_line_ends_converts_the_same(target, how, fixtures, tmp_path):
    """Notepad's UTF-8 BOM and Windows line ends change no byte a converter should care about: every file of
    every fixture, so changed, gives exactly the clean records under both data.on_error settings."""
    fx = fixtures[target]
    for name in fx.files:
        path = fx.root / name
        clean = path.read_bytes()
        path.write_bytes(RESAVED[how](clean))
        try:
            for on_error in ("raise", "skip"):
                assert fx.convert(on_error, tmp_path / name / on_error) == fx.clean[on_error], (name, on_error)
        finally:
            path.write_bytes(clean)


# --- photos with an EXIF block: upright, or one line -------------------------------------------------------

N_EXIF = 40


def exif_jpeg(rng: random.Random) -> tuple[bytes, int]:
    """A 24 x 16 JPEG whose EXIF block holds an orientation (1-8, or a value out of range) and some text."""
    exif = Image.Exif()
    orientation = rng.choice([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 65535])
    exif[0x0112] = orientation
    exif[0x010E] = "fuzz " * rng.randint(0, 8)  # ImageDescription: a block of some length
    buffer = io.BytesIO()
    Image.new("RGB", (24, 16), (rng.randrange(256), 80, 40)).save(buffer, "JPEG", exif=exif)
    return buffer.getvalue(), orientation


@pytest.mark.parametrize("i", range(N_EXIF))
def test_a_photo_with_a_damaged_or_odd_exif_block_decodes_upright_or_is_one_line(i, tmp_path):
    """load_image (every decode: training, caches, predict) on a JPEG whose EXIF orientation is any value,
    with 1-4 bytes of the EXIF block changed in half the cases: an RGB image, upright by the orientation
    when the block is intact, or a one-line TagrankError naming the file; no other exception."""
    rng = random.Random(f"exif-{i}")
    data, orientation = exif_jpeg(rng)
    start = data.index(b"Exif\x00\x00")
    length = int.from_bytes(data[start - 2:start], "big")  # the APP1 segment's length field
    damaged = i % 2 == 1
    if damaged:
        block = bytearray(data)
        for _ in range(rng.randint(1, 4)):
            block[rng.randrange(start + 6, start + length - 2)] ^= rng.randrange(1, 256)
        data = bytes(block)
    path = tmp_path / "photo.jpg"
    path.write_bytes(data)
    try:
        im = load_image(path)
    except TagrankError as err:
        assert str(path) in str(err) and "\n" not in str(err), repr(str(err))
        return
    assert im.mode == "RGB"
    if not damaged:  # orientations 5-8 turn it a quarter; 1-4 and out-of-range values leave it wide
        assert im.size == ((16, 24) if orientation in (5, 6, 7, 8) else (24, 16)), orientation
