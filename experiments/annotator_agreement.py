"""How often two annotators name the same object first: people (COCO captions) against the synthetic annotator.

    python experiments/annotator_agreement.py                       # ../shared/data/coco-mini; noise 0.15,0.25,0.4
    python experiments/annotator_agreement.py coco=/data/coco/annotations/captions_val2017.json noise=0.15
    python experiments/annotator_agreement.py coco=[a.json,b.json] noise=[0.1,0.2] scenes=500

Its settings are ``tagrank/conf/annotator_agreement.yaml``, composed by Hydra as tagrank's commands are.

Why: the synthetic annotator's only source of disagreement is the log-normal noise on each object's
importance (``data.noise``), and how much noise the ranked lists carry decides how much a model can
learn from the order, and how badly a model that feeds its previous tag back (the Naive-RNN) is misled
by it. This measures the human figure the noise should match: over every pair of captions of one
image, how often both mention the same COCO category first (images where the captions name two or
more categories). For the synthetic annotator, two lists of the same scene with independent noise.
"""

from __future__ import annotations

import itertools
import math
import random
from pathlib import Path

from omegaconf import DictConfig, ListConfig

from tagrank.cli import command
from tagrank.config import PositiveInt, check_value
from tagrank.data.sources.coco import read_captions
from tagrank.data.sources.raw import Problems
from tagrank.data.sources.normalize import COCO_SYNONYMS
from tagrank.data.synthetic import ranked_tags, render_scene
from tagrank.errors import TagrankError

ROOT = Path(__file__).resolve().parents[1]
COCO_MINI = [ROOT.parent / f"shared/data/coco-mini/annotations/captions_{split}2017.json" for split in ("train", "val")]


def top1_agreement(lists_per_image: list[list[tuple[str, ...]]]) -> tuple[float, int]:
    """Share of annotator pairs (of one image) whose lists start with the same tag, and the number of pairs.

    Images whose lists together hold fewer than two tags say nothing about order and are left out."""
    agree = pairs = 0
    for lists in lists_per_image:
        lists = [lst for lst in lists if lst]
        if len(set().union(*lists)) < 2:
            continue
        for a, b in itertools.combinations(lists, 2):
            agree += a[0] == b[0]
            pairs += 1
    if not pairs:
        raise TagrankError("no image has two annotators naming two or more tags between them")
    return agree / pairs, pairs


def caption_lists(captions_json: Path) -> list[list[tuple[str, ...]]]:
    """Per image, each caption's COCO categories in order of first mention (the converter's reader)."""
    if not captions_json.is_file():
        raise TagrankError(f"{captions_json}: no such file (expected a COCO captions_<split>.json)")
    _, mentions = read_captions(captions_json, list(COCO_SYNONYMS), Problems("raise"))
    return list(mentions.values())


def synthetic_lists(noise: float, n_scenes: int = 1500, size: int = 128, min_importance: float = 0.10,
                    annotators: int = 2) -> list[list[tuple[str, ...]]]:
    """Per scene (the default data's first scenes), ``annotators`` lists with independent importance noise."""
    out = []
    for i in range(n_scenes):
        _, _, objects = render_scene(random.Random(f"0-{i}"), size, 2, 7, 0.0, min_importance)  # noiseless
        rng = random.Random(f"annotators-{i}")
        out.append([tuple(ranked_tags([{**o, "importance": o["importance"] * math.exp(rng.gauss(0.0, noise))}
                                       for o in objects], min_importance)) for _ in range(annotators)])
    return out


def numbers(key: str, value: object) -> list[float]:
    """One number or a list of them (``noise=0.15``, ``noise=[0.15,0.25]``)."""
    values = list(value) if isinstance(value, (list, ListConfig)) else [value]
    if not values or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        raise TagrankError(f"{key}={value!r}: expected a number or a list of numbers ([0.15,0.25])")
    return [float(v) for v in values]


def measure(cfg: DictConfig) -> None:
    noises = numbers("noise", cfg.noise)
    check_value("scenes", cfg.scenes, PositiveInt)
    coco = cfg.coco if cfg.coco is not None else [str(p) for p in COCO_MINI]
    files = [str(f) for f in (coco if isinstance(coco, (list, ListConfig)) else [coco])]
    share, pairs = top1_agreement([lists for f in files for lists in caption_lists(Path(f))])
    print(f"COCO captions ({','.join(files)}):\n  same first category in {share:.3f} of {pairs} caption pairs")
    for noise in noises:
        share, pairs = top1_agreement(synthetic_lists(noise, cfg.scenes))
        print(f"synthetic annotator, data.noise={noise}: same first tag in {share:.3f} of {pairs} scene pairs")


main = command("annotator_agreement", measure)


if __name__ == "__main__":
    main()
