"""The embedded default dataset: generated scenes whose ranked tags a simulated annotator gives.

Each image (default 128x128 RGB) shows 2-7 objects drawn from 24 classes (6 shapes x 4 colours), of
varied size, position, rotation and overlap, on a cluttered background (a colour gradient, grey
strokes and speckle noise). The ground-truth list is what a simulated annotator would say first:

    importance(o) = salience[class(o)] * sqrt(visible_area(o) / image_area) * centrality(o) * noise

with ``centrality = 1 - 0.6 * d / d_max`` (d: distance of the object's centre to the image centre),
``visible_area`` the pixels left after occlusion by objects drawn on top of it, ``noise`` log-normal
(sigma ``noise``), and ``salience`` a fixed per-class prior (shape prior x colour prior: a red star
is noticed before a green ring of the same size). Objects are listed by decreasing importance; those
below ``min_importance`` are left out (never the most important one), so the list is learnable from
the image but not just "largest first".

Which classes appear can follow two regularities of real tag sets, both off by default:
long-tailed class frequencies (``class_zipf``: class weights ~ 1 / rank^s over a fixed shuffle of the
classes, so frequency is not tied to salience) and co-occurrence (``scenes``: each image has one of
that many scene types; each object comes from its scene's group of classes with probability
``scene_purity``, else from all classes). In PASCAL VOC 2007 a person is in 40% of the images, and
indoor objects come together; with independent, uniform objects the previous tag tells little about
the next one, and reading the previous tag is what sets the Naive-RNN apart from the paper's LSTM.

Everything is a function of ``seed`` and the image index, so the same parameters always give the
same dataset; the train/val/test split is by index and saved in the manifest.
"""

from __future__ import annotations

import logging
import math
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from tagrank.data.records import Record
from tagrank.data.sources.base import Source
from tagrank.errors import TagrankError

log = logging.getLogger("tagrank")

SHAPES = {"star": 1.5, "cross": 1.25, "triangle": 1.1, "circle": 1.0, "square": 0.85, "ring": 0.7}
COLOURS = {"red": ((215, 40, 40), 1.3), "yellow": ((235, 200, 35), 1.1), "blue": ((40, 80, 215), 0.95),
           "green": ((40, 160, 60), 0.8)}
CLASSES = [f"{c}_{s}" for s in SHAPES for c in COLOURS]


def salience(cls: str) -> float:
    colour, shape = cls.split("_")
    return SHAPES[shape] * COLOURS[colour][1]


def _polygon(shape: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    if shape == "triangle":
        pts = [(1.0, a) for a in (0, 120, 240)]
    elif shape == "square":
        pts = [(1.0, a) for a in (45, 135, 225, 315)]
    elif shape == "star":
        pts = [((1.0 if i % 2 == 0 else 0.45), i * 36) for i in range(10)]
    else:  # cross: a plus sign of arm width 0.35 r
        w = 0.35
        corners = [(w, 1), (w, w), (1, w), (1, -w), (w, -w), (w, -1), (-w, -1), (-w, -w), (-1, -w), (-1, w), (-w, w), (-w, 1)]
        pts = [(math.hypot(x, y), math.degrees(math.atan2(y, x))) for x, y in corners]
    return [(cx + r * m * math.cos(math.radians(a + angle)), cy + r * m * math.sin(math.radians(a + angle))) for m, a in pts]


def _draw(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, angle: float, fill) -> None:
    box = (cx - r, cy - r, cx + r, cy + r)
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "ring":
        draw.ellipse(box, outline=fill, width=max(2, int(r * 0.35)))
    else:
        draw.polygon(_polygon(shape, cx, cy, r, angle), fill=fill)


def class_pools(class_zipf: float, scenes: int) -> list[tuple[list[str], list[float]]]:
    """Weighted class pools: [all classes] when ``scenes`` is 0, else [all classes, scene 0, scene 1, ...].

    The shuffle is fixed (not the dataset seed) so that "the frequent classes" mean the same in every
    dataset built with the same ``class_zipf``; scene groups interleave the frequency ranks, so every
    scene has frequent and rare classes.
    """
    order = CLASSES[:]
    random.Random("class-frequencies").shuffle(order)
    weight = {c: 1.0 / (rank + 1) ** class_zipf for rank, c in enumerate(order)}
    pools = [(CLASSES, [weight[c] for c in CLASSES])]
    for g in range(scenes):
        group = order[g::scenes]
        pools.append((group, [weight[c] for c in group]))
    return pools


def render_scene(rng: random.Random, size: int, min_objects: int, max_objects: int, noise: float,
                 min_importance: float, class_zipf: float = 0.0, scenes: int = 0,
                 scene_purity: float = 0.8) -> tuple[Image.Image, list[str], list[dict]]:
    """One image, its ranked tag list, and every object's attributes (for tests and inspection).

    With the defaults (uniform, independent classes) the random stream is the one of the first
    datasets, so their caches and results stay valid.
    """
    pools = class_pools(class_zipf, scenes) if class_zipf or scenes else None
    nprng = np.random.default_rng(rng.getrandbits(32))
    # Background: a random two-colour gradient, grey strokes and speckle, all low-saturation.
    c0, c1 = (np.array([rng.randint(90, 200)] * 3) + nprng.integers(-25, 25, 3) for _ in range(2))
    t = np.linspace(0, 1, size)[None, :, None] if rng.random() < 0.5 else np.linspace(0, 1, size)[:, None, None]
    bg = (c0 * (1 - t) + c1 * t) * np.ones((size, size, 1))
    bg += nprng.normal(0, 12, (size, size, 3))
    image = Image.fromarray(np.clip(bg, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(rng.randint(4, 10)):
        g = rng.randint(60, 220)
        pts = [(rng.uniform(0, size), rng.uniform(0, size)) for _ in range(2)]
        draw.line(pts, fill=(g, g, g), width=rng.randint(1, 3))

    ids = np.zeros((size, size), dtype=np.int16)  # which object is visible at each pixel (0: none)
    objects = []
    scene = rng.randrange(scenes) if scenes else None
    for k in range(1, rng.randint(min_objects, max_objects) + 1):
        if pools is None:
            cls = rng.choice(CLASSES)
        else:
            group, weights = pools[0] if scene is None or rng.random() >= scene_purity else pools[1 + scene]
            cls = rng.choices(group, weights)[0]
        colour, shape = cls.split("_")
        r = size * rng.uniform(0.06, 0.28)
        cx, cy = rng.uniform(0.05, 0.95) * size, rng.uniform(0.05, 0.95) * size
        angle = rng.uniform(0, 360)
        base = np.array(COLOURS[colour][0]) + nprng.integers(-20, 21, 3)
        _draw(draw, shape, cx, cy, r, angle, tuple(int(v) for v in np.clip(base, 0, 255)))
        mask = Image.new("L", (size, size), 0)
        _draw(ImageDraw.Draw(mask), shape, cx, cy, r, angle, 255)
        ids[np.asarray(mask) > 0] = k
        objects.append({"class": cls, "cx": cx, "cy": cy, "r": r, "id": k, "scene": scene})

    d_max = math.hypot(size / 2, size / 2)
    for o in objects:
        area = float((ids == o["id"]).sum()) / (size * size)
        centrality = 1.0 - 0.6 * math.hypot(o["cx"] - size / 2, o["cy"] - size / 2) / d_max
        o["visible_area"] = area
        o["importance"] = salience(o["class"]) * math.sqrt(area) * centrality * math.exp(rng.gauss(0.0, noise))
    return image, ranked_tags(objects, min_importance), objects


def ranked_tags(objects: list[dict], min_importance: float) -> list[str]:
    """The annotator's list: classes by decreasing importance, objects below ``min_importance`` left out
    (never the most important one), each class named once."""
    ranked = sorted(objects, key=lambda o: -o["importance"])
    return list(dict.fromkeys(o["class"] for i, o in enumerate(ranked) if i == 0 or o["importance"] >= min_importance))


RENDER_SIZE = 128  # the default render_size


@dataclass
class SyntheticSource(Source):
    """Generated scenes; see the module docstring for the importance rule.

    ``render_size`` is the side of the square the scenes are drawn at. It was called ``image_size`` until
    issue 25, the same name as ``backbone.image_size`` (the size every image, drawn or photographed, is
    resized to for the backbone): the old name is still accepted, with a warning, from the command line
    and from the saved config of an older run, and the cache key keeps the old name, so datasets built
    before the rename are found."""

    n_train: int = 4000
    n_val: int = 500
    n_test: int = 1000
    render_size: int = RENDER_SIZE
    min_objects: int = 2
    max_objects: int = 7
    noise: float = 0.15
    min_importance: float = 0.10
    class_zipf: float = 0.0
    scenes: int = 0
    scene_purity: float = 0.8
    seed: int = 0
    image_size: int | None = None  # deprecated: the old name of render_size

    name = "synthetic"
    later_settings = {"class_zipf": 0.0, "scenes": 0, "scene_purity": 0.8, "image_size": None}
    key_names = {"render_size": "image_size"}

    def __post_init__(self) -> None:
        if self.image_size is not None:
            if self.render_size not in (self.image_size, RENDER_SIZE):
                raise TagrankError(f"data.image_size={self.image_size} (the old name of data.render_size) and "
                                   f"data.render_size={self.render_size} disagree: pass data.render_size alone")
            log.warning("data.image_size=%d is the old name of data.render_size (the size the scenes are drawn at; "
                        "backbone.image_size resizes images for the backbone): read as data.render_size=%d, pass "
                        "that instead", self.image_size, self.image_size)
            self.render_size, self.image_size = self.image_size, None
        lowest = {"n_train": 1, "n_val": 1, "n_test": 1, "render_size": 1, "min_objects": 1, "noise": 0,
                  "min_importance": 0}
        for key, low in lowest.items():
            if getattr(self, key) < low:
                raise TagrankError(f"data.{key}={getattr(self, key)}: expected >= {low}")
        if self.max_objects < self.min_objects:
            raise TagrankError(f"data.max_objects={self.max_objects}: expected >= data.min_objects={self.min_objects}")
        if self.class_zipf < 0:
            raise TagrankError(f"data.class_zipf={self.class_zipf}: expected >= 0 (0: uniform classes)")
        if not 0 <= self.scenes <= len(CLASSES):
            raise TagrankError(f"data.scenes={self.scenes}: expected 0 (no scenes) to {len(CLASSES)}")
        if not 0 <= self.scene_purity <= 1:
            raise TagrankError(f"data.scene_purity={self.scene_purity}: expected a probability in [0, 1]")

    def build(self, out_dir: Path) -> list[Record]:
        (out_dir / "images").mkdir(parents=True, exist_ok=True)
        splits = ["train"] * self.n_train + ["val"] * self.n_val + ["test"] * self.n_test
        records = []
        for i, split in enumerate(splits):
            rng = random.Random(f"{self.seed}-{i}")
            image, tags, _ = render_scene(rng, self.render_size, self.min_objects, self.max_objects, self.noise,
                                          self.min_importance, self.class_zipf, self.scenes, self.scene_purity)
            rel = f"images/{i:06d}.jpg"
            image.save(out_dir / rel, quality=92)
            records.append(Record(image=rel, tags=tags, split=split))
        return records
