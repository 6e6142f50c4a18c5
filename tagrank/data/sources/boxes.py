"""A folder of images with one box file per image, ranked by total box area (largest first).

``data.root`` holds ``ground-truth/<image>.txt`` (``data.labels``) and the images, ``images/<image>.jpg``
(``data.images``; ``.jpg``, ``.jpeg`` or ``.png``). Each line is one object::

    class xmin ymin xmax ymax [difficult]

(the Cartucho/mAP ground-truth format of ``../shared/data/office-boxes``); objects marked ``difficult`` are
left out unless ``data.include_difficult=true``. No paper protocol: split 70/10/20 % (seed 0) by default.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from tagrank.data.sources.raw import Problems, RawSource, assign, ranked_by_area
from tagrank.data.sources.normalize import normalize_tag
from tagrank.data.records import Record
from tagrank.errors import TagrankError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")  # any case


def read_boxes(path: Path, include_difficult: bool, problems: Problems) -> list[tuple[str, float]] | None:
    """``(class, box area)`` per line of a box file; None if a line is bad."""
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        problems("unreadable", str(path), f"cannot read ({err})")
        return None
    areas = []
    for line_no, line in enumerate(lines, start=1):
        words = line.split()
        if not words:
            continue
        difficult = words[-1] == "difficult"
        if difficult:
            words = words[:-1]
        try:
            if len(words) < 5:
                raise ValueError
            xmin, ymin, xmax, ymax = (float(w) for w in words[-4:])
        except ValueError:
            problems("bad_box_line", f"{path}:{line_no}", f"expected 'class xmin ymin xmax ymax [difficult]', got {line.strip()!r}")
            return None
        if not all(math.isfinite(v) for v in (xmin, ymin, xmax, ymax)):
            problems("bad_box_line", f"{path}:{line_no}", f"box coordinates must be finite numbers: {line.strip()!r}")
            return None
        if xmax < xmin or ymax < ymin:
            problems("bad_box_line", f"{path}:{line_no}", f"box has xmax < xmin or ymax < ymin: {line.strip()!r}")
            return None
        if difficult and not include_difficult:
            continue
        areas.append((normalize_tag(" ".join(words[:-4])), (xmax - xmin) * (ymax - ymin)))
    return areas


@dataclass
class BoxesSource(RawSource):
    """Images + per-image box files; see the module docstring."""

    labels: str = "ground-truth"
    images: str = "images"
    include_difficult: bool = False
    split: list[float] = field(default_factory=lambda: [0.7, 0.1, 0.2])
    seed: int = 0

    name = "boxes"
    layout = "a folder with ground-truth/<image>.txt box files and images/<image>.jpg"

    def inputs(self) -> list[Path]:
        return [Path(self.root) / self.labels, Path(self.root) / self.images]

    def convert(self, root: Path, problems: Problems) -> list[Record]:
        label_dir, image_dir = root / self.labels, root / self.images
        for d, key in ((label_dir, "labels"), (image_dir, "images")):
            if not d.is_dir():
                raise TagrankError(f"data.{key}: {d} is not a folder (expected {self.layout})")
        images = {p.stem: p for p in sorted(image_dir.iterdir(), reverse=True) if p.suffix.lower() in IMAGE_SUFFIXES}
        items = []
        for path in sorted(label_dir.glob("*.txt")):
            image = images.get(path.stem)
            if image is None:
                problems("annotation_for_missing_image", str(path), f"no image {path.stem}.jpg/.jpeg/.png in {image_dir}")
                continue
            areas = read_boxes(path, self.include_difficult, problems)
            if areas is None:
                continue
            if not areas:
                problems.no_tags += 1
                continue
            items.append((image.relative_to(root).as_posix(), ranked_by_area(areas)))
        unlabelled = len(set(images) - {p.stem for p in label_dir.glob("*.txt")})
        problems.no_tags += unlabelled
        return assign(items, self.split, self.seed)
