"""Each real-data converter on fixtures written in the exact source formats, and on the real sets in ../shared.

Fixtures are written here, into temp folders: VOC 2007 XML + a Hwang & Grauman tag file, LabelMe XML
(deleted objects, repeated and variant names), COCO captions/instances JSON, Cartucho box files. Each
converter's output is pinned list by list; every kind of bad input must name its file and line or id,
and ``data.on_error=skip`` must count what it leaves out.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from tagrank.data.sources.coco import CocoSource, caption_mentions, phrase_index
from tagrank.data.sources.json_stream import json_items
from tagrank.data.sources.raw import merge_ranked, split_sizes
from tagrank.data.sources.labelme import LabelMeSource
from tagrank.data.sources.normalize import COCO_SYNONYMS, labelme_name, normalize_tag
from tagrank.data.sources.pascal07 import Pascal07Source
from tagrank.data.records import MANIFEST, read_manifest
from tagrank.data.sources.base import ensure_built
from tagrank.errors import TagrankError
from tagrank.cli.data import prepare

from .conftest import SHARED_DATA, compose_cfg, needs_shared


def jpeg(path: Path, size=(16, 12)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (120, 80, 40)).save(path)


def lists(records) -> dict[str, list[str]]:
    return {Path(r.image).stem: r.tags for r in records}


def build(source, tmp_path) -> tuple[list, dict]:
    """Build for real (into a cache folder) and return the records and the left-out counts."""
    folder = ensure_built(source, tmp_path / "cache")
    return read_manifest(folder / MANIFEST), json.loads((folder / "skipped.json").read_text())


def run_prepare(overrides: list[str], tmp_path: Path) -> dict:
    cfg = compose_cfg(overrides, tmp_path / "run", tmp_path / "cache", config_name="data")
    return prepare(cfg)


# --- shared pieces ---------------------------------------------------------------------------------

def test_merge_ranked_mean_rank_absent_after_last_ties_by_first_appearance():
    assert merge_ranked([["a", "b", "c"]]) == ["a", "b", "c"]
    # a: 0+1=1, b: 1+0=1 (tie: a appeared first), c: 2+2 (absent from a list of 2) = 4
    assert merge_ranked([["a", "b", "c"], ["b", "a"]]) == ["a", "b", "c"]
    # named by every list beats named first by one
    assert merge_ranked([["x", "y"], ["y"], ["y"]]) == ["y", "x"]
    assert merge_ranked([["a", "a", "b"], []]) == ["a", "b"]


def test_split_sizes_exact_or_proportional():
    assert split_sizes(9963, [8500, 500, 963]) == [8500, 500, 963]
    assert split_sizes(6, [8500, 500, 963]) == [4, 1, 1]  # every split keeps at least one image
    assert split_sizes(85, [0.7, 0.1, 0.2]) == [59, 9, 17]
    assert sum(split_sizes(3825, [1800, 200, 1825])) == 3825
    with pytest.raises(TagrankError, match="three non-negative"):
        split_sizes(10, [1, 2])


# --- PASCAL VOC 2007 -------------------------------------------------------------------------------

VOC_XML = """<annotation>
\t<folder>VOC2007</folder>
\t<filename>{id}.jpg</filename>
\t<source>
\t\t<database>The VOC2007 Database</database>
\t\t<annotation>PASCAL VOC2007</annotation>
\t\t<image>flickr</image>
\t</source>
\t<size>
\t\t<width>500</width>
\t\t<height>375</height>
\t\t<depth>3</depth>
\t</size>
\t<segmented>0</segmented>
{objects}</annotation>
"""
VOC_OBJECT = """\t<object>
\t\t<name>{name}</name>
\t\t<pose>Unspecified</pose>
\t\t<truncated>0</truncated>
\t\t<difficult>{difficult}</difficult>
\t\t<bndbox>
\t\t\t<xmin>{box[0]}</xmin>
\t\t\t<ymin>{box[1]}</ymin>
\t\t\t<xmax>{box[2]}</xmax>
\t\t\t<ymax>{box[3]}</ymax>
\t\t</bndbox>
\t</object>
"""
# id -> objects (name, box, difficult); box areas use VOC's inclusive pixel coordinates
VOC_OBJECTS = {
    "000005": [("chair", (1, 1, 50, 50), 0), ("person", (100, 100, 159, 159), 0), ("chair", (60, 1, 109, 50), 0),
               ("diningtable", (1, 200, 400, 370), 1)],
    "000007": [("car", (1, 1, 300, 200), 0)],
    "000009": [("horse", (1, 1, 200, 200), 0), ("person", (1, 1, 100, 300), 0), ("dog", (1, 1, 10, 10), 0)],
    "000012": [("car", (1, 1, 30, 30), 0), ("person", (1, 1, 10, 10), 0)],
    "000016": [("bicycle", (1, 1, 100, 100), 0), ("person", (1, 1, 120, 100), 0)],
    "000017": [("person", (1, 1, 50, 50), 0), ("horse", (1, 1, 300, 300), 0)],
}
TAG_FILE = (
    "000005\tChair chair TABLE person\n"
    "000005\ttable chair\n"
    "000007\tcar\n"
    "\n"
    "000009\thorse person dog\n"
    "000009\tperson horse\n"
    "000009\tdog\n"
    "000012\tcar tree\n"
    "000016\tbicycle  person\n"
    "000017\tperson horse\n"
)


def write_voc(root: Path, tag_text: str = TAG_FILE) -> Path:
    voc = root / "VOCdevkit" / "VOC2007"
    (voc / "Annotations").mkdir(parents=True)
    (voc / "ImageSets" / "Main").mkdir(parents=True)
    for image_id, objects in VOC_OBJECTS.items():
        jpeg(voc / "JPEGImages" / f"{image_id}.jpg")
        objs = "".join(VOC_OBJECT.format(name=n, box=b, difficult=d) for n, b, d in objects)
        (voc / "Annotations" / f"{image_id}.xml").write_text(VOC_XML.format(id=image_id, objects=objs))
    ids = list(VOC_OBJECTS)
    (voc / "ImageSets" / "Main" / "trainval.txt").write_text("\n".join(ids[:3]) + "\n")
    (voc / "ImageSets" / "Main" / "test.txt").write_text("\n".join(ids[3:]) + "\n")
    (root / "tags.txt").write_text(tag_text)
    return voc


def test_pascal07_tag_lists_pinned(tmp_path):
    write_voc(tmp_path / "voc")
    source = Pascal07Source(root=str(tmp_path / "voc"), tags="tags.txt", split=[4, 1, 1])
    records, left = build(source, tmp_path)
    assert lists(records) == {
        "000005": ["chair", "table", "person"],  # merged: chair 0+1, table 1+0 (tie: chair first), person 2+2
        "000007": ["car"],
        "000009": ["horse", "person", "dog"],  # horse 0+1+1 = person 1+0+1 (tie: first seen), dog 2+2+0
        "000012": ["car", "tree"],
        "000016": ["bicycle", "person"],
        "000017": ["person", "horse"],
    }
    assert {r.image for r in records} == {f"VOCdevkit/VOC2007/JPEGImages/{i}.jpg" for i in VOC_OBJECTS}
    assert sorted(r.split for r in records) == ["test", "train", "train", "train", "train", "val"]
    assert left["skipped_total"] == 0 and left["no_tags"] == 0
    # the same seed gives the same split; the image paths resolve against data.root
    again, _ = build(Pascal07Source(root=str(tmp_path / "voc"), tags="tags.txt", split=[4, 1, 1]), tmp_path / "b")
    assert [(r.image, r.split) for r in again] == [(r.image, r.split) for r in records]
    assert all((source.image_root(tmp_path) / r.image).is_file() for r in records)


def test_pascal07_area_order_from_xml(tmp_path):
    write_voc(tmp_path / "voc")
    records, _ = build(Pascal07Source(root=str(tmp_path / "voc"), order="area"), tmp_path)
    got = lists(records)
    assert got["000005"] == ["chair", "person"]  # two chairs 2 x 2500 > person 3600; difficult table ignored
    assert got["000009"] == ["horse", "person", "dog"]
    assert got["000016"] == ["person", "bicycle"]
    assert got["000017"] == ["horse", "person"]
    with_difficult, _ = build(Pascal07Source(root=str(tmp_path / "voc"), order="area", include_difficult=True), tmp_path)
    assert lists(with_difficult)["000005"] == ["diningtable", "chair", "person"]


def test_pascal07_bad_input_names_file_and_line(tmp_path):
    root = tmp_path / "voc"
    voc = write_voc(root, TAG_FILE + "000017 person\n" + "999999\tcat\n")
    source = Pascal07Source(root=str(root), tags="tags.txt")
    with pytest.raises(TagrankError, match=r"tags\.txt:11: expected '<image id><TAB><tag> <tag> \.\.\.' but the line has no tab"):
        source.build(tmp_path)
    records, left = build(Pascal07Source(root=str(root), tags="tags.txt", on_error="skip"), tmp_path)
    assert len(records) == 6 and left["skipped"] == {"bad_tag_line": 1, "tags_for_missing_image": 1}
    assert "tags.txt:12: image id '999999'" in left["examples"][1]

    (voc / "ImageSets" / "Main" / "test.txt").write_text("000012\n000099\n000016\n000017\n")
    with pytest.raises(TagrankError, match=r"test\.txt:2: image '000099' is listed but .*000099\.jpg does not exist"):
        Pascal07Source(root=str(root), order="area").build(tmp_path)

    (voc / "ImageSets" / "Main" / "test.txt").write_text("000012\n000016\n000017\n")
    (voc / "Annotations" / "000007.xml").write_text("<annotation>\n<object><name>car</name>\n</annotation>\n")
    with pytest.raises(TagrankError, match=r"000007\.xml:3: malformed XML"):
        Pascal07Source(root=str(root), order="area").build(tmp_path)
    records, left = build(Pascal07Source(root=str(root), order="area", on_error="skip"), tmp_path)
    assert len(records) == 5 and left["skipped"] == {"malformed_xml": 1}

    with pytest.raises(TagrankError, match="set data.tags="):
        Pascal07Source(root=str(root)).build(tmp_path)


@needs_shared("hwang-pascal-vocab")
def test_pascal07_normalisation_keeps_hwang_grauman_vocabulary(tmp_path):
    scipy_io = pytest.importorskip("scipy.io")
    mat = scipy_io.loadmat(SHARED_DATA / "hwang-pascal-vocab" / "voc.mat")
    words = [str(cell[0][0]) for cell in mat["voc"]]
    assert len(words) == 399 and len(set(words)) == 399
    assert [normalize_tag(w) for w in words] == words
    assert [normalize_tag(f"  {w.upper()} ") for w in words] == words
    # Through the converter: the 399 words spread over the fixture's six images, in upper case.
    ids = list(VOC_OBJECTS)
    chunks = [words[i::6] for i in range(6)]
    text = "".join(f"{ids[i]}\t{' '.join(w.upper() for w in chunk)}\n" for i, chunk in enumerate(chunks))
    write_voc(tmp_path / "voc", text)
    records, _ = build(Pascal07Source(root=str(tmp_path / "voc"), tags="tags.txt"), tmp_path)
    assert {Path(r.image).stem: r.tags for r in records} == {ids[i]: chunks[i] for i in range(6)}


# --- LabelMe ---------------------------------------------------------------------------------------

def labelme_xml(folder: str, filename: str, objects: list[tuple[str, int]]) -> str:
    objs = "".join(
        f"<object><name>{name}</name><deleted>{deleted}</deleted><verified>0</verified><occluded>no</occluded>"
        f"<attributes></attributes><parts><hasparts></hasparts><ispartof></ispartof></parts>"
        f"<date>12-Mar-2007 20:17:40</date><id>{i}</id><polygon><username>anonymous</username>"
        f"<pt><x>{10 + i}</x><y>20</y></pt><pt><x>60</x><y>25</y></pt><pt><x>40</x><y>70</y></pt></polygon></object>"
        for i, (name, deleted) in enumerate(objects))
    return (f"<annotation><filename>{filename}</filename><folder>{folder}</folder><source>"
            f"<sourceImage>The MIT-CSAIL database of objects and scenes</sourceImage>"
            f"<sourceAnnotation>LabelMe Webtool</sourceAnnotation></source>{objs}</annotation>")


LABELME = {
    ("05june05_static_street_boston", "p1010736.jpg"): [("Trees", 0), ("car occluded", 0), ("sky", 1), ("tree", 0),
                                                        ("People", 0), ("", 0), (" Car ", 0)],
    ("05june05_static_street_boston", "p1010737.jpg"): [("building", 0), ("window", 0), ("windows", 0), ("Sky", 0),
                                                        ("road", 0)],
    ("05june05_static_street_boston", "p1010738.jpg"): [("car", 1), ("tree", 1)],
    ("static_outdoor_street", "img_0042.jpg"): [("person crop", 0), ("side walk", 0), ("sidewalk", 0),
                                                ("streetlight", 0)],
}


def write_labelme(root: Path) -> None:
    for (folder, filename), objects in LABELME.items():
        xml = root / "Annotations" / folder / filename.replace(".jpg", ".xml")
        xml.parent.mkdir(parents=True, exist_ok=True)
        xml.write_text(labelme_xml(folder, filename, objects))
        jpeg(root / "Images" / folder / filename)


def test_labelme_object_order_pinned(tmp_path):
    write_labelme(tmp_path / "lm")
    records, left = build(LabelMeSource(root=str(tmp_path / "lm"), split=[1, 1, 1]), tmp_path)
    assert lists(records) == {
        "p1010736": ["tree", "car", "person"],  # deleted sky dropped, repeated tree/car keep their first place
        "p1010737": ["building", "window", "sky", "road"],
        "img_0042": ["person", "sidewalk", "streetlight"],
    }
    assert left["no_tags"] == 1  # p1010738: every object deleted
    assert sorted(r.split for r in records) == ["test", "train", "val"]
    assert {r.image for r in records} >= {"Images/static_outdoor_street/img_0042.jpg"}
    assert labelme_name("Car_Side") == "car" and labelme_name("PERSONS") == "person"
    assert labelme_name("glasses") == "glasses"  # not a plural of anything in the table
    assert [labelme_name(n) for n in ("boys", "bikes", "Street Lights", "sofas")] == ["person", "bicycle", "streetlight", "couch"]


def test_labelme_image_list_and_bad_input(tmp_path):
    root = tmp_path / "lm"
    write_labelme(root)
    (root / "list.txt").write_text("05june05_static_street_boston/p1010736.jpg\n\nimg_0042.jpg\n")
    records, _ = build(LabelMeSource(root=str(root), image_list="list.txt", split=[1, 0, 1]), tmp_path)
    assert sorted(lists(records)) == ["img_0042", "p1010736"]

    (root / "list.txt").write_text("img_0042.jpg\nnot_there.jpg\n")
    with pytest.raises(TagrankError, match=r"list\.txt:2: image 'not_there\.jpg' is listed"):
        LabelMeSource(root=str(root), image_list="list.txt").build(tmp_path)

    (root / "Images" / "static_outdoor_street" / "img_0042.jpg").unlink()
    with pytest.raises(TagrankError, match=r"img_0042\.xml: image static_outdoor_street/img_0042\.jpg not found"):
        LabelMeSource(root=str(root)).build(tmp_path)
    bad = root / "Annotations" / "static_outdoor_street" / "broken.xml"
    bad.write_text("<annotation><filename>x.jpg</filename>\n<object><name>a & b</name></object></annotation>")
    records, left = build(LabelMeSource(root=str(root), on_error="skip", split=[1, 1, 0]), tmp_path)
    assert len(records) == 2
    assert left["skipped"] == {"annotation_for_missing_image": 1, "malformed_xml": 1}
    assert any("broken.xml:2" in e for e in left["examples"])


# --- COCO ------------------------------------------------------------------------------------------

COCO_CATEGORIES = [(1, "person"), (2, "bicycle"), (6, "bus"), (15, "bench"), (17, "cat"), (18, "dog"),
                   (34, "frisbee"), (55, "orange"), (58, "hot dog"), (65, "bed")]
# subset -> image id -> (file name, [(category id, area)], captions)
COCO = {
    "train": {
        1: ("000000000001.jpg", [(1, 1000.0), (18, 5000.0), (34, 200.0)],
            ["A man throwing a frisbee to his dog.", "A man and his dog playing with a frisbee.",
             "A dog catches a frisbee thrown by a man.", "Man and dog in a park.",
             "A person plays frisbee with a puppy."]),
        2: ("000000000002.jpg", [(58, 300.0), (1, 9000.0)],
            ["A hot dog with mustard held by a woman.", "Woman eating a hot dog.", "Hot dogs and a lady.",
             "A person holding a hotdog.", "A hot dog in a bun held by someone."]),
        3: ("000000000003.jpg", [(17, 700.0), (65, 9000.0), (17, 100.0)],
            ["An orange cat on a bed.", "A cat sleeping on a bed.", "Kitten napping on the bed.",
             "The bed has a cat on it.", "Orange kitty on a blanket."]),
        4: ("000000000004.jpg", [(15, 50.0)],
            ["A park bench under a tree.", "An empty bench.", "Benches in a park.", "A bench.", "Wooden bench."]),
    },
    "val": {
        10: ("000000000010.jpg", [(1, 100.0), (2, 300.0), (6, 9000.0)],
             ["Two people riding bikes next to a bus.", "Cyclists ride bicycles past a bus.",
              "People on bicycles and a city bus.", "A bus passes two men on bikes.", "A street with a bus."]),
        11: ("000000000011.jpg", [(6, 10.0)],
             ["A view of a city street.", "Buildings along a road.", "A street at dusk.", "An empty road.",
              "Street lights."]),
    },
}


def write_coco(root: Path, data: dict = COCO, year: int = 2017) -> None:
    (root / "annotations").mkdir(parents=True)
    ann_id = 100
    for subset, images in data.items():
        imgs, caps, insts = [], [], []
        for image_id, (name, objects, captions) in images.items():
            imgs.append({"license": 3, "file_name": name, "coco_url": f"http://images.cocodataset.org/{subset}{year}/{name}",
                         "height": 12, "width": 16, "date_captured": "2013-11-21 01:37:46", "id": image_id})
            for cat, area in objects:
                ann_id += 1
                insts.append({"segmentation": [[1.0, 1.0, 5.0, 1.0, 5.0, 5.0]], "area": area, "iscrowd": 0,
                              "image_id": image_id, "bbox": [1.0, 1.0, 4.0, 4.0], "category_id": cat, "id": ann_id})
            for text in captions:
                ann_id += 1
                caps.append({"image_id": image_id, "id": ann_id, "caption": text})
            jpeg(root / f"{subset}{year}" / name)
        info = {"description": "COCO 2017 Dataset", "url": "http://cocodataset.org", "version": "1.0", "year": year}
        licenses = [{"url": "http://creativecommons.org/licenses/by-nc-sa/2.0/", "id": 3, "name": "Attribution"}]
        cats = [{"supercategory": "x", "id": i, "name": n} for i, n in COCO_CATEGORIES]
        (root / "annotations" / f"captions_{subset}{year}.json").write_text(
            json.dumps({"info": info, "licenses": licenses, "images": imgs, "annotations": caps}))
        (root / "annotations" / f"instances_{subset}{year}.json").write_text(
            json.dumps({"info": info, "licenses": licenses, "images": imgs, "annotations": insts, "categories": cats}))


def test_coco_caption_order_pinned(tmp_path):
    write_coco(tmp_path / "coco")
    records, left = build(CocoSource(root=str(tmp_path / "coco"), val_fraction=0.25), tmp_path)
    assert lists(records) == {
        # person 0+0+2+0+0, dog 2+1+0+1+2 ("puppy"), frisbee 1+2+1+2+1: mean rank over the five captions
        "000000000001": ["person", "dog", "frisbee"],
        "000000000002": ["hot dog", "person"],  # "hot dog" (3 of 5 captions first) is one phrase, not a dog
        "000000000003": ["cat", "bed"],  # "orange" is a colour here: no orange instance in the image
        "000000000004": ["bench"],
        "000000000010": ["person", "bicycle", "bus"],
    }
    assert left["no_tags"] == 1  # image 11: no caption names a category
    assert {r.split for r in records if "val2017" in r.image} == {"test"}
    assert sorted(r.split for r in records if "train2017" in r.image) == ["train", "train", "train", "val"]
    loose, _ = build(CocoSource(root=str(tmp_path / "coco"), require_instance=False), tmp_path)
    # cat 1+0+0+1+1, orange 0+2+2+2+0 = bed 2+1+1+0+2 (tie: orange was mentioned first)
    assert lists(loose)["000000000003"] == ["cat", "orange", "bed"]
    assert "000000000011" not in lists(loose)


def test_coco_keeps_each_captions_own_list(tmp_path):
    """The merge reads five lists; the manifest keeps them (non-empty ones, after the instance check) for
    leave one annotator out, and the merged tags stay as they were."""
    write_coco(tmp_path / "coco")
    records, _ = build(CocoSource(root=str(tmp_path / "coco"), val_fraction=0.25), tmp_path)
    own = {Path(r.image).stem: r.lists for r in records}
    assert own["000000000001"] == [["person", "frisbee", "dog"], ["person", "dog", "frisbee"],
                                   ["dog", "frisbee", "person"], ["person", "dog"], ["person", "frisbee", "dog"]]
    # "orange" dropped (no orange instance); "kitten" and "kitty" are cats
    assert own["000000000003"] == [["cat", "bed"], ["cat", "bed"], ["cat", "bed"], ["bed", "cat"], ["cat"]]
    assert own["000000000010"][0] == ["person", "bicycle", "bus"]
    assert all(len(r.lists) == 5 for r in records)
    area, _ = build(CocoSource(root=str(tmp_path / "coco"), order="area"), tmp_path)
    assert all(r.lists == [] for r in area)  # one order per image: nothing to leave out


def test_a_build_finished_by_another_process_is_kept(tmp_path):
    """Two jobs (a SLURM array, parallel trials) build the same dataset: the second keeps the first's."""
    from tagrank.data.records import Record, write_manifest
    from tagrank.data.sources.base import Source

    class Racing(Source):
        name = "racing"

        def build(self, out_dir):
            other = tmp_path / "cache" / self.cache_key()  # the other job renames its folder in first
            other.mkdir(parents=True)
            write_manifest([Record("x.png", ["first"], "train")], other / MANIFEST)
            return [Record("x.png", ["second"], "train")]

    folder = ensure_built(Racing(), tmp_path / "cache")
    assert [r.tags for r in read_manifest(folder / MANIFEST)] == [["first"]]
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [folder.name]  # no partial folder left


def test_cache_key_follows_the_data_and_the_rules(tmp_path, monkeypatch):
    write_coco(tmp_path / "coco")
    monkeypatch.chdir(tmp_path)
    key = CocoSource(root=str(tmp_path / "coco")).cache_key()
    assert CocoSource(root="coco").cache_key() == key  # a relative root names the same data
    assert CocoSource(root="coco", order="area").cache_key() != key
    cap = tmp_path / "coco" / "annotations" / "captions_val2017.json"
    cap.write_text(cap.read_text().replace("Street lights.", "A dog."))  # edited data: rebuilt, not reused
    assert CocoSource(root="coco").cache_key() != key
    key = CocoSource(root="coco").cache_key()
    monkeypatch.setitem(COCO_SYNONYMS, "dog", ["puppy", "pup", "hound"])  # changed rules: rebuilt too
    assert CocoSource(root="coco").cache_key() != key
    key = CocoSource(root="coco").cache_key()
    monkeypatch.setattr(CocoSource, "version", 1)  # a cache made before the manifest kept `lists`: rebuilt
    assert CocoSource(root="coco").cache_key() != key


def test_coco_area_order_pinned(tmp_path):
    write_coco(tmp_path / "coco")
    records, left = build(CocoSource(root=str(tmp_path / "coco"), order="area"), tmp_path)
    assert lists(records) == {
        "000000000001": ["dog", "person", "frisbee"],
        "000000000002": ["person", "hot dog"],
        "000000000003": ["bed", "cat"],  # cat: 700 + 100
        "000000000004": ["bench"],
        "000000000010": ["bus", "bicycle", "person"],
        "000000000011": ["bus"],
    }
    assert left["no_tags"] == 0


def test_caption_mentions_synonyms_and_plurals():
    index = phrase_index(list(COCO_SYNONYMS))
    assert caption_mentions("A man riding a bike next to a TV.", index) == ("person", "bicycle", "tv")
    assert caption_mentions("Two women and three children watch televisions", index) == ("person", "tv")
    assert caption_mentions("Hot dogs, dogs and a dirt bike; people.", index) == ("hot dog", "dog", "motorcycle", "person")
    assert caption_mentions("The teddy bear sits by a wine glass and knives", index) == ("teddy bear", "wine glass", "knife")


def test_json_stream_matches_json_load_at_any_chunk_size(tmp_path):
    rng = random.Random(0)
    doc = {"info": {"year": 2017, "x": [1, 2.5e-3, None, True]}, "empty": [], "n": 123456789,
           "images": [{"id": i, "file_name": f"{i:012d}.jpg", "caption": "é \" \\ ü" * rng.randint(0, 3),
                       "area": rng.random() * 1e5} for i in range(40)],
           "s": "tail"}
    path = tmp_path / "doc.json"
    for indent, chunk in [(None, 1), (None, 3), (1, 7), (None, 64), (1, 1 << 22)]:  # values cut between reads
        path.write_text(json.dumps(doc, indent=indent), encoding="utf-8")
        got: dict = {}
        for key, index, value in json_items(path, chunk=chunk):
            if index is None:
                got[key] = value
            else:
                got.setdefault(key, []).append(value)
        assert got == {k: v for k, v in doc.items() if v != []}, chunk


def test_coco_bad_input_names_file_and_id(tmp_path):
    root = tmp_path / "coco"
    write_coco(root)
    cap = root / "annotations" / "captions_train2017.json"
    good = cap.read_text()
    cap.write_text(good[:-200])
    with pytest.raises(TagrankError, match=r"captions_train2017\.json:1: malformed JSON at character \d+"):
        CocoSource(root=str(root)).build(tmp_path)
    with pytest.raises(TagrankError, match="malformed JSON"):  # a broken file is never skipped silently
        CocoSource(root=str(root), on_error="skip").build(tmp_path)
    cap.write_text(good)

    (root / "train2017" / "000000000003.jpg").unlink()
    with pytest.raises(TagrankError, match=r"captions_train2017\.json: image id 3: .*000000000003\.jpg does not exist"):
        CocoSource(root=str(root)).build(tmp_path)
    jpeg(root / "train2017" / "000000000003.jpg")

    data = json.loads(good)
    data["annotations"].append({"image_id": 12345, "id": 999, "caption": "A dog."})
    cap.write_text(json.dumps(data))
    with pytest.raises(TagrankError, match=r"captions_train2017\.json: annotation id 999: image_id 12345 is not in 'images'"):
        CocoSource(root=str(root)).build(tmp_path)

    inst = root / "annotations" / "instances_val2017.json"
    data = json.loads(inst.read_text())
    data["annotations"].append({"image_id": 10, "id": 7, "category_id": 999, "area": 5.0, "iscrowd": 0})
    data["annotations"].append({"image_id": 10, "id": 8, "category_id": "dog", "area": 5.0})
    inst.write_text(json.dumps(data))
    with pytest.raises(TagrankError, match=r"instances_val2017\.json: annotations\[\d+\]: expected an object with integer"):
        CocoSource(root=str(root), order="area").build(tmp_path)
    del data["annotations"][-1]
    inst.write_text(json.dumps(data))
    with pytest.raises(TagrankError, match=r"instances_val2017\.json: annotation id 7: category_id 999 is not in 'categories'"):
        CocoSource(root=str(root), order="area").build(tmp_path)

    records, left = build(CocoSource(root=str(root), on_error="skip"), tmp_path)
    assert left["skipped"] == {"annotation_for_missing_image": 1, "unknown_category": 1}
    assert len(records) == 5


def test_tagrank_data_prints_statistics_and_skips(tmp_path, capsys):
    root = tmp_path / "coco"
    write_coco(root)
    (root / "train2017" / "000000000003.jpg").unlink()
    with pytest.raises(TagrankError, match="000000000003.jpg does not exist"):
        run_prepare(["data=coco", f"data.root={root}"], tmp_path)
    out = tmp_path / "out"
    stats = run_prepare(["data=coco", f"data.root={root}", "data.on_error=skip", f"out={out}"], tmp_path)
    printed = capsys.readouterr().out
    for name in ("manifest.jsonl", "vocab.json", "stats.json", "skipped.json", "source.json"):
        assert (out / name).is_file(), name
    assert stats["images"] == {"train": 2, "val": 1, "test": 1}
    assert stats["left_out"]["skipped"] == {"missing_image": 1} and stats["left_out"]["no_tags"] == 1
    assert "images       train 2 | val 1 | test 1 | total 4" in printed
    assert "left out     1 without any tag; 1 bad records skipped (missing_image 1)" in printed
    assert "top tags     " in printed and "empty lists  " in printed and "vocabulary   " in printed
    assert json.loads((out / "stats.json").read_text())["images"] == stats["images"]
    with pytest.raises(TagrankError, match=r"data=coco: set data.root=<folder>"):
        run_prepare(["data=coco"], tmp_path)
    # a dataset whose tags all fall below min_tag_count is an error, after the statistics
    with pytest.raises(TagrankError, match=r"manifest.jsonl: no tag is seen data.min_tag_count=50 times"):
        run_prepare(["data=coco", f"data.root={root}", "data.on_error=skip", "data.min_tag_count=50"], tmp_path)
    # out= never overwrites a folder that is not a tagrank dataset
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(TagrankError, match="is not a tagrank dataset folder"):
        run_prepare(["data=coco", f"data.root={root}", "data.on_error=skip", f"out={tmp_path / 'mine'}"], tmp_path)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    for out in (tmp_path / "mine" / "notes.txt", tmp_path / "mine" / "notes.txt" / "x"):  # a file in the way
        with pytest.raises(TagrankError, match=f"^out={out}: {tmp_path / 'mine' / 'notes.txt'} is a file, not a folder$"):
            run_prepare(["data=coco", f"data.root={root}", "data.on_error=skip", f"out={out}"], tmp_path)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


# --- boxes -----------------------------------------------------------------------------------------

BOXES = {"a": ["chair 0 0 10 10", "book 0 0 5 5", "chair 20 20 30 30", "tvmonitor 0 0 12 12"],
         "b": ["sofa 0 0 100 50", "pottedplant 1.5 1.5 20.5 80.5", "cup 0 0 1 1 difficult"],
         "c": []}


def write_boxes(root: Path, boxes: dict[str, list[str]] = BOXES) -> None:
    for name, lines in boxes.items():
        jpeg(root / "images" / f"{name}.jpg")
        (root / "ground-truth").mkdir(exist_ok=True)
        (root / "ground-truth" / f"{name}.txt").write_text("".join(line + "\n" for line in lines))


def test_boxes_fixture_pinned_and_bad_lines(tmp_path):
    root = tmp_path / "boxes"
    write_boxes(root)
    from tagrank.data.sources.boxes import BoxesSource

    records, left = build(BoxesSource(root=str(root), split=[1, 0, 1]), tmp_path)
    assert lists(records) == {"a": ["chair", "tvmonitor", "book"], "b": ["sofa", "pottedplant"]}
    assert left["no_tags"] == 1
    with_difficult, _ = build(BoxesSource(root=str(root), include_difficult=True, split=[1, 0, 1]), tmp_path)
    assert lists(with_difficult)["b"] == ["sofa", "pottedplant", "cup"]
    # A box file edited in place (same size, only its content and time change) rebuilds the dataset.
    box = root / "ground-truth" / "a.txt"
    box.write_text(box.read_text().replace("book 0 0 5 5", "book 0 0 9 9").replace("tvmonitor 0 0 12 12", "tvmonitor 0 0 99 99"))
    edited, _ = build(BoxesSource(root=str(root), split=[1, 0, 1]), tmp_path)
    assert lists(edited)["a"] == ["tvmonitor", "chair", "book"]
    (root / "ground-truth" / "e.txt").write_text("chair 0 0 nan 10\n")
    jpeg(root / "images" / "e.JPG")  # any case of the suffix
    with pytest.raises(TagrankError, match=r"e\.txt:1: box coordinates must be finite numbers"):
        BoxesSource(root=str(root)).build(tmp_path / "e")
    (root / "ground-truth" / "e.txt").write_text("chair 0 0 10 10\n")
    assert "e" in lists(build(BoxesSource(root=str(root), split=[1, 0, 1]), tmp_path)[0])
    for name in ("e.txt",):
        (root / "ground-truth" / name).unlink()
    (root / "images" / "e.JPG").unlink()

    (root / "ground-truth" / "c.txt").write_text("chair 0 0 10\n")
    (root / "ground-truth" / "d.txt").write_text("chair 0 0 10 10\n")
    with pytest.raises(TagrankError, match=r"c\.txt:1: expected 'class xmin ymin xmax ymax \[difficult\]'"):
        BoxesSource(root=str(root)).build(tmp_path)
    records, left = build(BoxesSource(root=str(root), on_error="skip", split=[1, 0, 1]), tmp_path)
    assert left["skipped"] == {"annotation_for_missing_image": 1, "bad_box_line": 1}


# --- the real sets in ../shared --------------------------------------------------------------------

@needs_shared("office-boxes")
def test_office_boxes_all_images_convert(tmp_path):
    stats = run_prepare(["data=boxes", f"data.root={SHARED_DATA / 'office-boxes'}", f"out={tmp_path / 'ob'}"], tmp_path)
    assert sum(stats["images"].values()) == 85 and stats["left_out"]["skipped_total"] == 0
    assert stats["images"] == {"train": 59, "val": 9, "test": 17}
    assert stats["vocab_before_filter"] == 30
    got = lists(read_manifest(tmp_path / "ob" / MANIFEST))
    # 2007_000027: bookcase 244x468 > coffee tables 234x225 + 100x159 > 6 books > tv monitor 171x228
    assert got["2007_000027"][:4] == ["bookcase", "coffeetable", "book", "tvmonitor"]


@needs_shared("coco-mini")
def test_coco_mini_all_images_convert_with_hand_checked_lists(tmp_path):
    root = SHARED_DATA / "coco-mini"
    records, left = build(CocoSource(root=str(root)), tmp_path)
    assert len(records) + left["no_tags"] == 159 and left["skipped_total"] == 0
    assert left["no_tags"] == 6  # e.g. 231460: five captions about "street signs"; 484641: "bacon and eggs"
    got = lists(records)
    assert "000000231460" not in got and "000000484641" not in got
    # every caption of these starts with "A man" / "A person" / "A woman"...: person first
    for image in ("000000165518", "000000172648", "000000229358", "000000349860", "000000501368"):
        assert got[image][0] == "person", image
    assert got["000000165518"] == ["person", "motorcycle"]  # "A man drives a motorcycle down a road in the fog."
    assert got["000000501368"] == ["person", "hair drier"]  # "...drying her hair with a hair dryer / blow dryer"
    assert got["000000125870"] == ["airplane", "bus"]  # "An airport filled with large passenger jets", "...buses"
    assert got["000000054718"] == ["elephant"]  # "a baby elephant" is not a person
    split = {r.image.split("/")[0]: set() for r in records}
    for r in records:
        split[r.image.split("/")[0]].add(r.split)
    assert split == {"train2017": {"train", "val"}, "val2017": {"test"}}
    by_area, left = build(CocoSource(root=str(root), order="area"), tmp_path)
    assert len(by_area) == 159 and left["no_tags"] == 0
    first_same = sum(lists(by_area)[k][0] == v[0] for k, v in got.items())
    assert 0.6 < first_same / len(got) < 0.85  # mention order is not just object size


@needs_shared("coco-mini")
def test_train_on_coco_mini_real_photos(tmp_path, cache_dir):
    """The real training path (Hydra config, Trainer, pretrained backbone) on coco-mini, small and quick."""
    from tagrank.cli.train import train

    cfg = compose_cfg(["data=coco", f"data.root={SHARED_DATA / 'coco-mini'}", "backbone.image_size=64",
                       "trainer.max_epochs=1", "trainer.enable_progress_bar=false"], tmp_path, cache_dir)
    value = train(cfg)
    metrics = json.loads((tmp_path / "metrics.json").read_text())["metrics"]
    assert metrics["n_images"] == 75  # 77 val2017 images with tags, 2 with none in the training vocabulary
    assert value is not None and 0.0 < metrics["ndcg_mean"] <= 1.0
    predictions = [json.loads(line) for line in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    assert all(p["image"].startswith("val2017/") for p in predictions)


@needs_shared("coco-mini")
@pytest.mark.slow
def test_tagrank_train_on_coco_mini_end_to_end(tmp_path, cli_env):
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "tagrank-train"), "data=coco", f"data.root={SHARED_DATA / 'coco-mini'}",
         "trainer.max_epochs=3", "trainer.enable_progress_bar=false", f"hydra.run.dir={tmp_path / 'run'}"],
        capture_output=True, text=True, timeout=900, env=cli_env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())["metrics"]
    assert metrics["n_images"] == 75  # 77 val2017 test images with tags, 2 with none in the kept vocabulary
    assert 0.0 < metrics["ndcg_mean"] <= 1.0 and 0.0 < metrics["p_mean"] <= 1.0
    assert "NDCG" in proc.stdout
