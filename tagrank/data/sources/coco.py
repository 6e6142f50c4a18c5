"""MS-COCO (2014 or 2017) as a ranked-tag benchmark: categories in the order captions mention them.

``data.root`` holds the standard layout: ``annotations/captions_{train,val}<year>.json``,
``annotations/instances_{train,val}<year>.json`` and the image folders ``train<year>/``, ``val<year>/``
(or ``images/train<year>/``...).

``data.order=captions`` (default): in each caption, the categories are ranked by their first mention, a
mention being any phrase of ``tagrank.data.sources.normalize.COCO_SYNONYMS`` or its plural ("A man riding a
bike" -> person, bicycle; longest phrase first, so "hot dog" is not a dog). The five captions are merged
by mean rank (``tagrank.data.sources.raw.merge_ranked``); a category no caption mentions is left out. With
``data.require_instance=true`` (default) only categories with an instance in the image count, which
drops false mentions ("an orange cat" with no orange in the image). Each caption's own non-empty list is
kept beside the merge (the manifest's ``lists``) for the leave-one-annotator-out protocol (``tagrank.loo``).
``data.order=area``: categories ranked by the total area of their instances (``area`` field).

Splits: ``val<year>`` is the test split (the official held-out set); a seeded ``data.val_fraction`` of
``train<year>`` is the validation split, the rest is training.

The JSON files are streamed element by element (``tagrank.data.sources.json_stream.json_items``), never loaded
whole: the 448 MB ``instances_train2017.json`` is read in bounded memory, and the full 2017 training set
converts in well under two minutes (``benchmarks/bench_coco.py``).
"""

from __future__ import annotations

import json
import os
import re
from array import array
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tagrank.data.records import Record, assign_splits
from tagrank.data.sources.json_stream import json_items
from tagrank.data.sources.normalize import COCO_SYNONYMS, coco_phrases
from tagrank.data.sources.raw import (PhraseIndex, Problems, RawSource, first_mentions, index_phrases, merge_ranked,
                                      ranked_by_area)
from tagrank.errors import TagrankError

ORDERS = ("captions", "area")
_WORD = re.compile(r"[a-z]+")


def caption_mentions(caption: str, index: PhraseIndex) -> tuple[str, ...]:
    """Categories in the order the caption first names them (longest phrase wins at each word)."""
    return first_mentions(_WORD.findall(caption.lower()), index)


def phrase_index(categories: list[str]) -> PhraseIndex:
    return index_phrases(coco_phrases(categories))


def _image_entry(path: Path, i: int, item: Any, problems: Problems) -> tuple[int, str] | None:
    if isinstance(item, dict) and isinstance(item.get("id"), int) and isinstance(item.get("file_name"), str):
        return item["id"], item["file_name"]
    problems("bad_entry", f"{path}: images[{i}]", "expected an object with an integer id and a string file_name")
    return None


@dataclass
class _Instances:
    images: dict[int, str]
    areas: dict[int, dict[str, float]]  # image id -> category -> total area (categories in file order)


def read_instances(path: Path, problems: Problems) -> _Instances:
    images: dict[int, str] = {}
    categories: dict[int, str] = {}
    ann_id, image_id, cat_id, area = array("q"), array("q"), array("q"), array("d")
    for key, i, item in json_items(path):
        if key == "images" and i is not None:
            entry = _image_entry(path, i, item, problems)
            if entry:
                images[entry[0]] = entry[1]
        elif key == "categories" and i is not None:
            if not (isinstance(item, dict) and isinstance(item.get("id"), int) and isinstance(item.get("name"), str)):
                problems("bad_entry", f"{path}: categories[{i}]", "expected an object with an integer id and a string name")
                continue
            categories[item["id"]] = item["name"]
        elif key == "annotations" and i is not None:
            if not (isinstance(item, dict) and all(type(item.get(k)) is int for k in ("image_id", "category_id"))
                    and isinstance(item.get("area"), (int, float)) and not isinstance(item.get("area"), bool)):
                problems("bad_entry", f"{path}: annotations[{i}]",
                         "expected an object with integer image_id and category_id and a numeric area")
                continue
            ann_id.append(item["id"] if type(item.get("id")) is int else -1)
            image_id.append(item["image_id"])
            cat_id.append(item["category_id"])
            area.append(item["area"])
    if not images:
        raise TagrankError(f"{path}: no images (expected a COCO instances file with 'images', 'annotations', 'categories')")
    areas: dict[int, dict[str, float]] = defaultdict(dict)
    for a, im, c, ar in zip(ann_id, image_id, cat_id, area):
        if c not in categories:
            problems("unknown_category", f"{path}: annotation id {a}", f"category_id {c} is not in 'categories'")
        elif im not in images:
            problems("annotation_for_missing_image", f"{path}: annotation id {a}", f"image_id {im} is not in 'images'")
        else:
            totals = areas[im]
            totals[categories[c]] = totals.get(categories[c], 0.0) + ar
    return _Instances(images, dict(areas))


def read_captions(path: Path, categories: list[str], problems: Problems) -> tuple[dict[int, str], dict[int, list[tuple[str, ...]]]]:
    """Images of a captions file and, per image, each caption's ranked mentions (file order)."""
    index = phrase_index(categories)
    images: dict[int, str] = {}
    mentions: dict[int, list[tuple[str, ...]]] = defaultdict(list)
    pending: list[tuple[int, int]] = []  # (annotation id, image id) to check once all images are known
    for key, i, item in json_items(path):
        if key == "images" and i is not None:
            entry = _image_entry(path, i, item, problems)
            if entry:
                images[entry[0]] = entry[1]
        elif key == "annotations" and i is not None:
            if not (isinstance(item, dict) and isinstance(item.get("image_id"), int) and isinstance(item.get("caption"), str)):
                problems("bad_entry", f"{path}: annotations[{i}]", "expected an object with an integer image_id and a string caption")
                continue
            mentions[item["image_id"]].append(caption_mentions(item["caption"], index))
            if item["image_id"] not in images:  # images usually come first; else check at the end
                pending.append((item.get("id", i), item["image_id"]))
    if not images:
        raise TagrankError(f"{path}: no images (expected a COCO captions file with 'images' and 'annotations')")
    for ann, im in pending:
        if im not in images:
            problems("annotation_for_missing_image", f"{path}: annotation id {ann}", f"image_id {im} is not in 'images'")
            mentions.pop(im, None)
    return images, dict(mentions)


@dataclass
class CocoSource(RawSource):
    """COCO captions/instances JSON + images; see the module docstring."""

    year: int = 2017
    order: str = "captions"
    require_instance: bool = True
    val_fraction: float = 0.1
    seed: int = 0

    name = "coco"
    version = 2  # 2: each caption's own list kept in the manifest's `lists` (leave one annotator out)
    layout = "a folder with annotations/captions_train2017.json, instances_*.json, train2017/ and val2017/"

    def files(self, kind: str, subset: str) -> Path:
        return Path(self.root) / "annotations" / f"{kind}_{subset}{self.year}.json"

    def inputs(self) -> list[Path]:
        return [self.files(k, s) for k in ("captions", "instances") for s in ("train", "val")]

    def rules(self) -> str:
        return json.dumps(COCO_SYNONYMS, sort_keys=True)

    def image_dir(self, root: Path, subset: str) -> Path:
        for d in (root / f"{subset}{self.year}", root / "images" / f"{subset}{self.year}"):
            if d.is_dir():
                return d
        raise TagrankError(f"data.root={root}: no {subset}{self.year}/ or images/{subset}{self.year}/ image folder")

    def ranked(self, subset: str, problems: Problems) -> tuple[dict[int, str], dict[int, list[str]], dict[int, list[list[str]]]]:
        """Images, ranked categories and (``order=captions``) each caption's own non-empty list of one
        subset (train or val)."""
        need_instances = self.order == "area" or self.require_instance
        inst_path, cap_path = self.files("instances", subset), self.files("captions", subset)
        for path, needed, hint in ((inst_path, need_instances, "or set data.require_instance=false"),
                                   (cap_path, self.order == "captions", "or use data.order=area")):
            if needed and not path.is_file():
                raise TagrankError(f"{path}: not found (expected {self.layout}; {hint})")
        inst = read_instances(inst_path, problems) if need_instances else None
        if self.order == "area":
            return inst.images, {im: ranked_by_area(totals.items()) for im, totals in inst.areas.items()}, {}
        categories = sorted({c for totals in inst.areas.values() for c in totals} | set(COCO_SYNONYMS)) if inst else list(COCO_SYNONYMS)
        images, mentions = read_captions(cap_path, categories, problems)
        ranked, own = {}, {}
        for im, lists in mentions.items():
            if inst is not None:
                present = inst.areas.get(im, {})
                lists = [[c for c in lst if c in present] for lst in lists]
            ranked[im] = merge_ranked(lists)
            own[im] = [list(lst) for lst in lists if lst] if len(lists) > 1 else []
        return images, ranked, own

    def convert(self, root: Path, problems: Problems) -> list[Record]:
        if self.order not in ORDERS:
            raise TagrankError(f"data.order={self.order!r}: expected one of {list(ORDERS)}")
        if not 0 < self.val_fraction < 1:
            raise TagrankError(f"data.val_fraction={self.val_fraction}: expected a fraction in (0, 1): "
                               "the validation split comes from train")
        records = []
        for subset in ("train", "val"):
            images, ranked, own = self.ranked(subset, problems)
            folder = self.image_dir(root, subset)
            on_disk = {e.name for e in os.scandir(folder)}
            source = self.files("captions" if self.order == "captions" else "instances", subset)
            items = []
            for im in sorted(images):
                if images[im] not in on_disk:
                    problems("missing_image", f"{source}: image id {im}", f"{folder / images[im]} does not exist")
                    continue
                tags = ranked.get(im)
                if not tags:
                    problems.no_tags += 1
                    continue
                items.append((f"{folder.relative_to(root).as_posix()}/{images[im]}", tags, own.get(im, [])))
            if subset == "val":
                records += [Record(image, tags, "test", lists=lists) for image, tags, lists in items]
                continue
            n_val = round(self.val_fraction * len(items))
            if self.val_fraction > 0 and len(items) > 1:
                n_val = max(n_val, 1)
            labels = assign_splits(len(items), [len(items) - n_val, n_val, 0], self.seed)
            records += [Record(image, tags, label, lists=lists) for (image, tags, lists), label in zip(items, labels)]
        return records
