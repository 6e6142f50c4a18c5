"""PASCAL VOC 2007 with Hwang & Grauman's ranked tag lists (the paper's first dataset).

``data.root`` is the folder holding ``VOC2007/`` (or ``VOCdevkit/VOC2007/``, or ``VOC2007`` itself) with
``JPEGImages/``, ``Annotations/`` and ``ImageSets/Main/{trainval,test}.txt``. The images are those of the
image sets (all 9963 with both sets; every JPEG when there is no ``ImageSets``).

``data.order=tags`` (default) reads ``data.tags``, a text file (absolute, or relative to ``data.root``)
with one line per image and annotator::

    000005<TAB>chair table person window

Tags are lower-cased and trimmed (nothing else, see ``tagrank.data.sources.normalize``); several lines for one
image are merged by mean rank, ties by first appearance (``tagrank.data.sources.raw.merge_ranked``).
``data.order=area`` ranks the VOC classes of each image by total box area from the XML annotations,
``difficult`` objects left out unless ``data.include_difficult=true``.

Paper protocol defaults: tags seen < 15 times in training dropped, split 8500/500/963 (seed 0); a set of
another size is split in the same proportions.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from tagrank.data.sources.raw import Problems, RawSource, assign, merge_ranked, parse_xml, ranked_by_area
from tagrank.data.sources.normalize import normalize_tag
from tagrank.data.records import Record
from tagrank.errors import TagrankError

ORDERS = ("tags", "area")


def find_voc(root: Path) -> Path:
    for candidate in (root / "VOC2007", root / "VOCdevkit" / "VOC2007", root):
        if (candidate / "JPEGImages").is_dir():
            return candidate
    raise TagrankError(f"data.root={root}: no VOC2007/JPEGImages, VOCdevkit/VOC2007/JPEGImages or JPEGImages folder")


def read_tag_file(path: Path, known: set[str], problems: Problems) -> dict[str, list[str]]:
    """``{image id: merged ranked tags}`` from a ``<id>\\t<tag> <tag> ...`` file."""
    lists: dict[str, list[list[str]]] = defaultdict(list)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as err:
        raise TagrankError(f"{path}: cannot read the tag file ({err})") from err
    for line_no, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        if "\t" not in line:
            problems("bad_tag_line", f"{path}:{line_no}", "expected '<image id><TAB><tag> <tag> ...' but the line has no tab")
            continue
        image_id, tags = line.split("\t", 1)
        image_id = Path(image_id.strip()).stem
        if image_id not in known:
            problems("tags_for_missing_image", f"{path}:{line_no}", f"image id {image_id!r} is not an image of the data set")
            continue
        lists[image_id].append([t for t in (normalize_tag(w) for w in tags.split()) if t])
    return {image_id: merge_ranked(ls) for image_id, ls in lists.items()}


def box_areas(path: Path, include_difficult: bool, problems: Problems) -> list[tuple[str, float]] | None:
    """``(class, box area)`` of each object of a VOC XML annotation; None if the file is bad."""
    root = parse_xml(path, problems)
    if root is None:
        return None
    areas = []
    for i, obj in enumerate(root.iter("object")):
        name, box = obj.findtext("name"), obj.find("bndbox")
        try:
            xmin, ymin, xmax, ymax = (float(box.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax"))
        except (AttributeError, TypeError, ValueError):
            problems("bad_object", f"{path}:object {i + 1}", "expected <name> and <bndbox> with numeric xmin, ymin, xmax, ymax")
            return None
        if not name or not name.strip():
            problems("bad_object", f"{path}:object {i + 1}", "the object has no <name>")
            return None
        if (obj.findtext("difficult") or "0").strip() == "1" and not include_difficult:
            continue
        # VOC boxes are 1-based, inclusive pixel coordinates.
        areas.append((normalize_tag(name), max(0.0, xmax - xmin + 1) * max(0.0, ymax - ymin + 1)))
    return areas


@dataclass
class Pascal07Source(RawSource):
    """VOC 2007 devkit + Hwang & Grauman tag file (or box areas); see the module docstring."""

    tags: str | None = None
    order: str = "tags"
    include_difficult: bool = False
    split: list[float] = field(default_factory=lambda: [8500, 500, 963])
    seed: int = 0

    name = "pascal07"
    layout = "a folder with VOC2007/JPEGImages, Annotations and ImageSets/Main"

    def tag_file(self) -> Path | None:
        return Path(self.root or ".", Path(self.tags).expanduser()) if self.tags else None

    def inputs(self) -> list[Path]:
        voc = Path(self.root)
        voc = next((c for c in (voc / "VOC2007", voc / "VOCdevkit" / "VOC2007", voc) if c.is_dir()), voc)
        files = [voc / "ImageSets" / "Main" / f"{s}.txt" for s in ("trainval", "test")] + [voc / "Annotations"]
        return files + ([self.tag_file()] if self.tags else [])

    def image_ids(self, voc: Path, problems: Problems) -> list[str]:
        sets = [voc / "ImageSets" / "Main" / f"{s}.txt" for s in ("trainval", "test")]
        existing = {p.stem for p in (voc / "JPEGImages").glob("*.jpg")}
        if not any(p.is_file() for p in sets):
            return sorted(existing)
        ids: list[str] = []
        for path in sets:
            if not path.is_file():
                continue
            for line_no, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), start=1):
                image_id = line.strip()
                if not image_id:
                    continue
                if image_id not in existing:
                    problems("missing_image", f"{path}:{line_no}", f"image {image_id!r} is listed but "
                             f"{voc / 'JPEGImages' / (image_id + '.jpg')} does not exist")
                    continue
                ids.append(image_id)
        return list(dict.fromkeys(ids))

    def convert(self, root: Path, problems: Problems) -> list[Record]:
        if self.order not in ORDERS:
            raise TagrankError(f"data.order={self.order!r}: expected one of {list(ORDERS)}")
        voc = find_voc(root)
        ids = self.image_ids(voc, problems)
        if self.order == "tags":
            path = self.tag_file()
            if path is None:
                raise TagrankError("data=pascal07: set data.tags=<Hwang & Grauman tag file> or use data.order=area")
            ranked = read_tag_file(path, set(ids), problems)
        else:
            ranked = {}
            for image_id in ids:
                areas = box_areas(voc / "Annotations" / f"{image_id}.xml", self.include_difficult, problems)
                if areas is not None:  # None: a bad annotation, already reported (or raised)
                    ranked[image_id] = ranked_by_area(areas)
        prefix = voc.relative_to(root) / "JPEGImages"
        items = []
        for image_id in ids:
            tags = ranked.get(image_id)
            if tags is None and self.order == "area":
                continue  # a bad annotation, already reported
            if not tags:
                problems.no_tags += 1
                continue
            items.append(((prefix / f"{image_id}.jpg").as_posix(), tags))
        return assign(items, self.split, self.seed)
