"""The Karpathy-layout caption converter (data=captions, data=flickr8k) on a fixture it writes, and on the
real Flickr8k file in ../shared.

The fixture holds the cases that decide a list: plurals and spellings, a two-word form against its
one-word part, a tag named twice in one caption, a tag named by one caption of five, a sentence with
raw text only, a photo without any tag, COCO's filepath and restval. Each bad input must name its file
and line or photo, and ``data.on_error=skip`` must count what it leaves out.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from tagrank.data.sources.captions import CaptionsSource, words_of
from tagrank.data.records import MANIFEST, read_manifest
from tagrank.data.sources.base import ensure_built
from tagrank.errors import TagrankError
from tagrank.cli.data import prepare

from .conftest import SHARED_DATA, compose_cfg, needs_shared

VOCABULARY = """# fixture vocabulary: the tag, then its other forms
man men
dog dogs   # a trailing comment
hot_dog hot_dogs
shirt shirts t-shirt

frisbee
"""


def sentence(raw: str, tokens: bool = True) -> dict:
    return {"raw": raw, **({"tokens": words_of(raw)} if tokens else {})}


PHOTOS = [
    ("a.jpg", "train", [
        sentence("A man throws a ball to two dogs ."),
        sentence("Men and a dog play with balls"),
        sentence("A dog catches a ball ."),
        sentence("A man in a t-shirt ."),  # the only caption naming shirt, and it names it second
        sentence("A man , a dog and a ball"),
    ]),
    ("b.jpg", "val", [
        sentence("A dog eats a hot dog ; the dog likes hot dogs ."),  # dog twice: once, at its first place
        sentence("HOT DOGS, for two MEN near a dog!", tokens=False),  # raw text only: split here
    ]),
    ("c.jpg", "test", [sentence("A red car on a street .")]),  # no tag: left out and counted
    ("d.jpg", "restval", [sentence("A man with a frisbee")], "sub"),  # COCO: restval is train; filepath
    ("e.jpg", "test", [sentence("A frisbee and a man")]),
]


def write_set(root: Path, photos=PHOTOS, vocabulary: str = VOCABULARY) -> Path:
    images = []
    for filename, split, sentences, *filepath in photos:
        entry = {"filename": filename, "split": split, "sentences": sentences}
        if filepath:
            entry["filepath"] = filepath[0]
        images.append(entry)
        path = root / "images" / Path(*filepath) / filename
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (16, 12), (120, 80, 40)).save(path)
    (root / "dataset_test.json").write_text(json.dumps({"images": images, "dataset": "test"}))
    (root / "vocabulary.txt").write_text(vocabulary)
    return root


def build(source: CaptionsSource, tmp_path: Path) -> tuple[dict[str, tuple[str, list[str]]], dict]:
    folder = ensure_built(source, tmp_path / "cache")
    records = {r.image: (r.split, r.tags) for r in read_manifest(folder / MANIFEST)}
    return records, json.loads((folder / "skipped.json").read_text())


def source(root: Path, **kw) -> CaptionsSource:
    return CaptionsSource(root=str(root), vocabulary="vocabulary.txt", **kw)


def test_words_like_karpathys_tokens():
    assert words_of("A man's T-shirt , near the dogs' ball ; o'clock do n't") == \
        ["a", "man's", "t-shirt", "near", "the", "dogs", "ball", "o'clock", "do", "n't"]
    assert words_of("person on ski 's (ATV's) - 3 kids!") == ["person", "on", "ski", "s", "atv's", "3", "kids"]


def test_lists_pinned(tmp_path):
    records, left = build(source(write_set(tmp_path / "set")), tmp_path)
    assert records == {
        # man: ranks 0,0,2,0,0; dog 2,1,0,2,1; ball is no tag; shirt, named by one caption of five, last
        "a.jpg": ("train", ["man", "dog", "shirt"]),
        # caption 1: dog, hot dog (not dog again); caption 2: hot dog, man, dog -> hot dog 1+0, dog 0+2, man 2+1
        "b.jpg": ("val", ["hot dog", "dog", "man"]),
        "sub/d.jpg": ("train", ["man", "frisbee"]),
        "e.jpg": ("test", ["frisbee", "man"]),
    }
    assert left["no_tags"] == 1 and left["skipped_total"] == 0  # c.jpg


def test_flickr8k_preset_and_statistics(tmp_path, capsys):
    root = write_set(tmp_path / "set")
    (root / "dataset_test.json").rename(root / "dataset_flickr8k.json")
    cfg = compose_cfg(["data=flickr8k", f"data.root={root}", "data.min_tag_count=2", f"out={tmp_path / 'out'}"],
                      tmp_path / "run", tmp_path / "cache", config_name="data")
    stats = prepare(cfg)
    assert stats["images"] == {"train": 2, "val": 1, "test": 1}
    assert stats["vocab_after_filter"] == 1  # man, in both training photos
    assert "left out     1 without any tag; 0 bad records skipped" in capsys.readouterr().out
    cfg = compose_cfg(["data=captions", f"data.root={root}"], tmp_path / "run", tmp_path / "cache", config_name="data")
    with pytest.raises(TagrankError, match=r"data=captions: set data.vocabulary=<file>"):
        prepare(cfg)


def test_vocabulary_errors_name_file_and_line(tmp_path):
    root = write_set(tmp_path / "set", vocabulary=VOCABULARY + "pup puppy dogs\n")
    with pytest.raises(TagrankError, match=r"vocabulary\.txt:8: form 'dogs' already names tag 'dog' \(line 3\)"):
        build(source(root), tmp_path)
    records, left = build(source(root, on_error="skip"), tmp_path)
    assert records["a.jpg"][1] == ["man", "dog", "shirt"] and left["skipped"] == {"duplicate_form": 1}
    (root / "vocabulary.txt").write_text(VOCABULARY + "hot-_dog\n")
    with pytest.raises(TagrankError, match=r"vocabulary\.txt:8: form 'hot-_dog' can never match a caption word"):
        build(source(root), tmp_path)
    (root / "vocabulary.txt").write_text("# only a comment\n\n")
    with pytest.raises(TagrankError, match=r"data.vocabulary=.*vocabulary\.txt: no tags"):
        build(source(root, on_error="skip"), tmp_path)


def test_bad_records_name_file_and_photo_or_are_skipped_and_counted(tmp_path):
    bad_split = ("f.jpg", "dev", [sentence("A dog")])
    no_text = ("g.jpg", "train", [sentence("A dog"), {"raw": " ", "tokens": []}, sentence("Men")])
    for photos, message in [
        ([*PHOTOS, bad_split], r"images\[5\] \(f\.jpg\): split 'dev': expected one of \['train', 'restval', 'val', 'test'\]"),
        ([*PHOTOS, no_text], r"images\[5\] \(g\.jpg\): sentences\[1\]: expected 'tokens' \(a list of words\) or 'raw'"),
        ([*PHOTOS, ("x.jpg", "test", [sentence("A dog")]), PHOTOS[4]], r"images\[6\] \(e\.jpg\): the photo is listed twice"),
    ]:
        root = write_set(tmp_path / "one", photos)
        with pytest.raises(TagrankError, match=r"dataset_test\.json: " + message):
            build(source(root), tmp_path)
    (root / "images" / "e.jpg").unlink()
    with pytest.raises(TagrankError, match=r"dataset_test\.json: images\[4\] \(e\.jpg\): .*images/e\.jpg does not exist"):
        build(source(root), tmp_path)

    root = write_set(tmp_path / "all", [*PHOTOS, bad_split, no_text])
    (root / "images" / "e.jpg").unlink()
    records, left = build(source(root, on_error="skip"), tmp_path)
    assert left["skipped"] == {"bad_split": 1, "missing_image": 1, "no_text": 1} and left["no_tags"] == 1
    assert [m.split(": ")[1] for m in left["examples"]] == ["images[4] (e.jpg)", "images[5] (f.jpg)", "images[6] (g.jpg)"]
    assert "e.jpg" not in records and "f.jpg" not in records
    assert records["g.jpg"] == ("train", ["dog", "man"])  # its two sentences with text still count
    doc = (root / "dataset_test.json").read_text()
    (root / "dataset_test.json").write_text(doc[:-40])
    with pytest.raises(TagrankError, match=r"dataset_test\.json:1: malformed JSON at character \d+: \w.*(?<! at)$"):
        build(source(root, on_error="skip"), tmp_path)  # a broken file is never skipped silently


def test_cache_follows_the_vocabulary_and_the_json(tmp_path, monkeypatch):
    root = write_set(tmp_path / "set")
    monkeypatch.chdir(tmp_path)
    key = source(root).cache_key()
    assert CaptionsSource(root="set", vocabulary="vocabulary.txt").cache_key() == key  # a relative root, same data
    assert build(source(root), tmp_path)[0]["e.jpg"][1] == ["frisbee", "man"]
    (root / "vocabulary.txt").write_text(VOCABULARY.replace("frisbee", "frisbee disc"))
    assert source(root).cache_key() != key
    (root / "vocabulary.txt").write_text(VOCABULARY.replace("\nfrisbee\n", "\n"))  # frisbee is no tag any more
    assert build(source(root), tmp_path)[0]["e.jpg"][1] == ["man"]
    key = source(root).cache_key()
    data = json.loads((root / "dataset_test.json").read_text())
    data["images"][4]["sentences"] = [sentence("A dog and a man")]
    (root / "dataset_test.json").write_text(json.dumps(data))
    assert build(source(root), tmp_path)[0]["e.jpg"][1] == ["dog", "man"]
    assert source(root).cache_key() != key


def test_annotation_file_found_or_named(tmp_path):
    root = write_set(tmp_path / "set")
    assert source(root).inputs()[0] == root / "dataset_test.json"  # the one dataset_*.json of the root
    (root / "dataset_other.json").write_text("{}")
    with pytest.raises(TagrankError, match=r"2 dataset_\*\.json files \(dataset_other\.json, dataset_test\.json\); "
                                           r"set data.annotations="):
        build(source(root), tmp_path)
    assert build(source(root, annotations=str(root / "dataset_test.json")), tmp_path)[0]["e.jpg"][0] == "test"
    with pytest.raises(TagrankError, match=r"data.annotations=.*nothing\.json: not found"):
        build(source(root, annotations="nothing.json"), tmp_path)
    with pytest.raises(TagrankError, match=r"data.images=.*photos: no such folder"):
        build(source(root, annotations="dataset_test.json", images="photos"), tmp_path)
    with pytest.raises(TagrankError, match=r"data.root=.*dataset_test\.json: a file, not a folder \(expected "):
        build(source(root / "dataset_test.json"), tmp_path)
    with pytest.raises(TagrankError, match=r"data.root=.*nowhere: no such folder \(expected "):
        build(source(root / "nowhere"), tmp_path)


# --- the real Flickr8k file ------------------------------------------------------------------------

@needs_shared("flickr8k")
def test_flickr8k_official_split_vocabulary_and_hand_checked_lists(tmp_path):
    root = SHARED_DATA / "flickr8k"
    cfg = compose_cfg(["data=flickr8k", f"data.root={root}", f"out={tmp_path / 'out'}"], tmp_path / "run",
                      tmp_path / "cache", config_name="data")
    stats = prepare(cfg)
    assert stats["images"] == {"train": 6000, "val": 1000, "test": 1000}  # the official split
    assert stats["left_out"]["skipped_total"] == 0
    # The same figures from the JSON in a few plain lines: a photo's tags are the set its captions name.
    form_tag = {}
    for line in (root / "vocabulary.txt").read_text().splitlines():
        forms = line.split("#")[0].split()
        form_tag.update({form: forms[0] for form in forms})
    photos = json.loads((root / "dataset_flickr8k.json").read_text())["images"]
    tags = {p["filename"]: {form_tag[t] for s in p["sentences"] for t in s["tokens"] if t in form_tag} for p in photos}
    counts = Counter(t for p in photos if p["split"] == "train" for t in tags[p["filename"]])
    kept = {t for t, n in counts.items() if n >= 15}
    assert stats["vocab_after_filter"] == len(kept)
    with_tags = [ts for ts in tags.values() if ts]
    assert stats["left_out"]["no_tags"] == len(photos) - len(with_tags)
    assert stats["mean_list_length"] == pytest.approx(sum(len(ts & kept) for ts in with_tags) / len(with_tags))
    got = {r.image: r.tags for r in read_manifest(tmp_path / "out" / MANIFEST)}
    assert {image: set(ts) for image, ts in got.items()} == {f: ts for f, ts in tags.items() if ts}
    # Hand-checked from the five captions (mean rank; a tag a caption does not name ranks after its last):
    # "A child in a pink dress is climbing up a set of stairs...", "A girl going into a wooden building",
    # "A little girl climbing into a wooden playhouse", "...the stairs to her playhouse", "...pink dress...":
    # girl 4, child 7, dress 7 (tie: child named first), set 9, stair 9, building 10.
    assert got["1000268201_693b08cb0e.jpg"] == ["girl", "child", "dress", "set", "stair", "building"]
    # Every caption names the man first, four the bench then the dog; one the park, one the leash and ground.
    assert got["1003163366_44323f5815.jpg"] == ["man", "bench", "dog", "park", "leash", "ground"]
    # Four captions "A young boy jumping into a lake", one "The young boy in the blue shirt ... into the water".
    assert got["2138487671_5b89104043.jpg"] == ["boy", "lake", "shirt", "water"]
    # "dog" twice in a caption counts once; road (2 captions) beats spot, street ties pavement, named first.
    assert got["1001773457_577c3a7d70.jpg"] == ["dog", "road", "spot", "street", "pavement"]


def test_each_captions_list_kept_beside_the_merged_one(tmp_path):
    folder = ensure_built(source(write_set(tmp_path / "set")), tmp_path / "cache")
    lists = {r.image: r.lists for r in read_manifest(folder / MANIFEST)}
    assert lists["a.jpg"] == [["man", "dog"], ["man", "dog"], ["dog"], ["man", "shirt"], ["man", "dog"]]
    assert lists["b.jpg"] == [["dog", "hot dog"], ["hot dog", "man", "dog"]]
    assert lists["e.jpg"] == [] and lists["sub/d.jpg"] == []  # one caption: no second list to compare with
    raw = [json.loads(line) for line in (folder / MANIFEST).read_text().splitlines()]
    assert all(("lists" in r) == (r["image"] in ("a.jpg", "b.jpg")) for r in raw)


def test_files_saved_with_a_utf8_bom_read_as_without(tmp_path):
    """Notepad saves UTF-8 with a byte-order mark: the vocabulary's first tag and the JSON must still read."""
    vocabulary = VOCABULARY.split("\n", 1)[1]  # the first line a tag, where a BOM would stick to it
    plain, _ = build(source(write_set(tmp_path / "plain", vocabulary=vocabulary)), tmp_path / "a")
    root = write_set(tmp_path / "bom", vocabulary=vocabulary)
    for name in ("vocabulary.txt", "dataset_test.json"):
        (root / name).write_bytes(b"\xef\xbb\xbf" + (root / name).read_bytes())
    with_bom, left = build(source(root, on_error="skip"), tmp_path / "b")
    assert with_bom == plain and left["skipped_total"] == 0
