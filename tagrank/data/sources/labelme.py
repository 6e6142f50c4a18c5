"""LabelMe annotations ranked in the order objects were annotated (the paper's second dataset).

``data.root`` holds ``Annotations/<folder>/<name>.xml`` and ``Images/<folder>/<filename>`` (the LabelMe
toolbox layout; XML files directly under ``Annotations/`` and images beside their XML also work). An
annotation is ``<annotation><filename/><folder/><object><name/><deleted/><polygon>...</polygon></object>...``.

As in Hwang & Grauman, an image's ranked list is the order of its non-deleted ``<object>`` elements;
names are normalised by ``tagrank.data.sources.normalize.labelme_name`` (lower case, trimmed, view/occlusion
words such as "occluded" or "crop" dropped, plurals and variants mapped by ``LABELME_SYNONYMS``), and a
repeated name keeps its first position. Objects without a name are ignored.

``data.image_list`` (optional; absolute or relative to ``data.root``): a file naming the images to keep,
one per line as ``<folder>/<filename>`` or ``<filename>`` (the paper's 3825 images). Paper defaults: tags
seen < 10 times dropped, split 1800/200/1825 (seed 0); a set of another size is split in proportion.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from tagrank.data.sources.raw import Problems, RawSource, assign, parse_xml
from tagrank.data.sources.normalize import LABELME_QUALIFIERS, LABELME_SYNONYMS, labelme_name
from tagrank.data.records import Record
from tagrank.errors import TagrankError


def object_order(path: Path, problems: Problems) -> tuple[str, str, list[str]] | None:
    """``(folder, filename, ranked names)`` of one LabelMe XML file; None if it is bad."""
    root = parse_xml(path, problems)
    if root is None:
        return None
    if root.tag != "annotation" or not (root.findtext("filename") or "").strip():
        problems("bad_annotation", str(path), "expected <annotation> with a <filename>")
        return None
    names = []
    for obj in root.findall("object"):
        if (obj.findtext("deleted") or "0").strip() == "1":
            continue
        name = labelme_name(obj.findtext("name") or "")
        if name:
            names.append(name)
    return (root.findtext("folder") or "").strip(), root.findtext("filename").strip(), names


@dataclass
class LabelMeSource(RawSource):
    """LabelMe XML + images; see the module docstring."""

    annotations: str = "Annotations"
    images: str = "Images"
    image_list: str | None = None
    split: list[float] = field(default_factory=lambda: [1800, 200, 1825])
    seed: int = 0

    name = "labelme"
    layout = "a folder with Annotations/<folder>/*.xml and Images/<folder>/<images>"

    def inputs(self) -> list[Path]:
        root = Path(self.root)
        extra = [root / self.image_list] if self.image_list else []
        return [root / self.annotations, *sorted(p for p in (root / self.annotations).glob("*") if p.is_dir()), *extra]

    def rules(self) -> str:
        return json.dumps([LABELME_SYNONYMS, sorted(LABELME_QUALIFIERS)], sort_keys=True)

    def find_image(self, root: Path, xml: Path, folder: str, filename: str) -> Path | None:
        for candidate in (root / self.images / folder / filename, root / self.images / filename, xml.parent / filename):
            if candidate.is_file():
                return candidate
        return None

    def read_list(self, root: Path) -> list[tuple[int, str]] | None:
        """``(line number, entry)`` of each non-blank line of ``data.image_list``."""
        if not self.image_list:
            return None
        path = root / self.image_list
        try:
            lines = path.read_text(encoding="utf-8-sig").splitlines()
            return [(i, line.strip()) for i, line in enumerate(lines, start=1) if line.strip()]
        except (OSError, UnicodeDecodeError) as err:
            raise TagrankError(f"data.image_list={path}: cannot read ({err})") from err

    def convert(self, root: Path, problems: Problems) -> list[Record]:
        ann_dir = root / self.annotations
        if not ann_dir.is_dir():
            raise TagrankError(f"data.root={root}: no {self.annotations}/ folder (expected {self.layout})")
        wanted = self.read_list(root)
        found: dict[str, list[str]] = {}  # image path relative to root -> ranked names
        by_name: dict[str, str] = {}  # "<folder>/<filename>" and "<filename>" -> image path
        for xml in sorted(ann_dir.rglob("*.xml")):
            parsed = object_order(xml, problems)
            if parsed is None:
                continue
            folder, filename, names = parsed
            image = self.find_image(root, xml, folder, filename)
            if image is None:
                problems("annotation_for_missing_image", str(xml), f"image {folder + '/' if folder else ''}{filename} "
                         f"not found under {root / self.images}")
                continue
            rel = image.relative_to(root).as_posix()
            found[rel] = names
            by_name.setdefault(f"{folder}/{filename}", rel)
            by_name.setdefault(filename, rel)
        if wanted is not None:
            keep = {}
            for line_no, entry in wanted:
                rel = by_name.get(entry) or by_name.get(entry.lstrip("/"))
                if rel is None:
                    problems("missing_image", f"{root / self.image_list}:{line_no}",
                             f"image {entry!r} is listed but has no annotation with an existing image")
                    continue
                keep[rel] = found[rel]
            found = keep
        items = []
        for rel, names in found.items():
            if not names:
                problems.no_tags += 1
                continue
            items.append((rel, names))
        return assign(items, self.split, self.seed)
