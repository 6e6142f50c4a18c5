"""Table 1's numbers: per-image scores of every run, and per method the means, spreads and intervals.

:func:`image_scores` scores every run image by image (the mean over k = 1..K of NDCG@k and P@k); the
table's intervals (:func:`summarise`) and ``report.html``'s per-photo numbers both come from it.
:func:`summarise` gives per method the mean +- std over seeds (sample std) and a 95% interval from a
two-level bootstrap (:func:`seed_image_bootstrap`) that resamples the test images and the seeds
together, so that an interval carries the seed-to-seed variance as well as the images'; and the
paired interval of each method's NDCG minus the reference method's (the LSTM): the question "is it
really better here, whatever the seed?".

Where the test images have several annotators' lists (``lists`` in ``predictions.jsonl``: the caption
datasets), every row also gets the leave-one-annotator-out scores (:mod:`tagrank.loo`, ``ndcg_loo`` and
``p_loo``) with intervals from the same bootstrap on the images that have >= 2 lists, and a row of its
own, :data:`PERSON`: each held-out list scored against the merge of the others, whose interval
resamples the images (a person has no seeds).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from tagrank.errors import TagrankError
from tagrank.loo import loo_at_k
from tagrank.metrics import ndcg_at_k, precision_at_k
from tagrank.report.methods import PAPER, REFERENCE, label, row_order
from tagrank.report.runs import Run

N_BOOT = 2000  # bootstrap replicates
LEVEL = 0.95
PERSON = "person"  # the row of a person (one caption against the others), LOO columns only
PERSON_LABEL = "A person (one caption against the others)"


@dataclass
class Row:
    """One method's line of Table 1 (all numbers are means over k = 1..K unless named @k)."""

    method: str
    label: str
    seeds: list[int]
    n_images: int
    ndcg: float  # NaN in the person's row (it has only the LOO columns)
    ndcg_std: float
    ndcg_ci: tuple[float, float] | None
    p: float
    p_std: float
    p_ci: tuple[float, float] | None
    delta: float | None = None  # NDCG minus the reference method's, on the same images
    delta_ci: tuple[float, float] | None = None
    paper: tuple[float, float] | None = None
    ndcg_at: list[float] = field(default_factory=list)  # mean over seeds of NDCG@k, k = 1..K
    ndcg_at_std: list[float] = field(default_factory=list)
    p_at: list[float] = field(default_factory=list)
    p_at_std: list[float] = field(default_factory=list)
    n_boot: int = N_BOOT  # the intervals' bootstrap replicates
    # Leave one annotator out (None where the test images have one list each), on ``n_loo_images``.
    ndcg_loo: float | None = None
    ndcg_loo_std: float = math.nan
    ndcg_loo_ci: tuple[float, float] | None = None
    p_loo: float | None = None
    p_loo_std: float = math.nan
    p_loo_ci: tuple[float, float] | None = None
    n_loo_images: int = 0


def per_image_scores(run: Run) -> dict[str, tuple[float, float]]:
    """Per test image, its (mean over k of NDCG@k, mean over k of P@k); empty ground truths left out."""
    out = {}
    ks = range(1, run.top_k + 1)
    for rec in run.predictions:
        truth, pred = rec["truth"], rec["predicted"]
        if not truth:
            continue
        out[rec["image"]] = (float(np.mean([ndcg_at_k(pred, truth, k, run.relevance) for k in ks])),
                             float(np.mean([precision_at_k(pred, truth, k) for k in ks])))
    return out


def per_image_loo(run: Run) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per test image with >= 2 annotators' lists: the LOO (NDCG@k, P@k) at each k of the run's list and
    of the person, each [top_k, 2] (:func:`tagrank.loo.loo_at_k`); empty for one list per image."""
    out = {}
    for rec in run.predictions:
        both = loo_at_k(rec["predicted"], rec.get("lists", []), run.top_k, run.relevance)
        if both is not None:
            out[rec["image"]] = both
    return out


@dataclass
class Scores:
    """Every run's per-image scores, on the test images all runs share (empty ground truths left out)."""

    images: list[str]
    runs: dict[str, list[Run]]  # method -> its runs, lowest seed first; methods in Table 1's order
    values: dict[str, np.ndarray]  # method -> [n_seeds, n_images, 2]: (NDCG, P), each the mean over k
    # Leave one annotator out, on the shared images with >= 2 lists (none: empty, None).
    loo_images: list[str] = field(default_factory=list)
    loo: dict[str, np.ndarray] = field(default_factory=dict)  # method -> [n_seeds, n_loo_images, 2]
    person: np.ndarray | None = None  # [1, n_loo_images, 2]: the person's (NDCG, P), means over k
    person_at: np.ndarray | None = None  # [top_k, 2]: the person's mean (NDCG@k, P@k) over the images


def image_scores(runs: list[Run]) -> Scores:
    """Score every run image by image; each run's scores must reproduce its own ``metrics.json``."""
    if not runs:
        raise TagrankError("no runs to summarise")
    by_method: dict[str, list[Run]] = {}
    for r in sorted(runs, key=lambda r: (row_order(r.method), r.seed)):
        by_method.setdefault(r.method, []).append(r)
    scores = {m: [per_image_scores(r) for r in rs] for m, rs in by_method.items()}
    for m, rs in by_method.items():
        for r, s in zip(rs, scores[m]):
            mean = float(np.mean([v[0] for v in s.values()])) if s else math.nan
            if abs(mean - float(r.metrics["ndcg_mean"])) > 1e-3:
                raise TagrankError(f"{r.path}: predictions.jsonl gives NDCG {mean:.4f} but metrics.json says "
                                   f"{float(r.metrics['ndcg_mean']):.4f}")
    images = sorted(set.intersection(*(set(s) for ss in scores.values() for s in ss)))
    if not images:
        raise TagrankError("the runs share no test image")
    values = {m: np.array([[s[img] for img in images] for s in ss], dtype=np.float64) for m, ss in scores.items()}
    out = Scores(images=images, runs=by_method, values=values)
    loo = {m: [per_image_loo(r) for r in rs] for m, rs in by_method.items()}
    shared = set(images).intersection(*(set(s) for ss in loo.values() for s in ss))
    if shared:  # the person's lists are the same in every run: the first run's
        out.loo_images = sorted(shared)
        out.loo = {m: np.array([[s[img][0].mean(axis=0) for img in out.loo_images] for s in ss])
                   for m, ss in loo.items()}
        first = next(iter(loo.values()))[0]
        person = np.array([first[img][1] for img in out.loo_images])  # [n_loo_images, top_k, 2]
        out.person, out.person_at = person.mean(axis=1)[None], person.mean(axis=0)
    return out


def seed_image_bootstrap(values: dict[str, np.ndarray], n_boot: int = N_BOOT, seed: int = 0) -> dict[str, np.ndarray]:
    """Two-level bootstrap replicates of each method's mean score.

    ``values[m]`` is ``[n_seeds_m, n_images, ...]``: each seed's run scored image by image, the same
    images in the same order for every method. In each replicate the images are resampled with
    replacement, one draw for all methods (so a difference between two methods is paired image by
    image), and each method's seeds are resampled with replacement, independently per method; the
    replicate's statistic is the mean over the resampled seeds' runs of the mean over the resampled
    images. Returns ``m -> [n_boot, ...]``.

    The image draw is that of the plain image bootstrap, ``default_rng(seed).integers(0, n_images,
    (n_boot, n_images))``, so with one seed the replicates are exactly the plain bootstrap's of the
    per-image scores. Both means are weighted sums: with the replicates' image counts ``C`` and seed
    counts ``W`` the statistic is ``W S C^T / (n_seeds n_images)``, a few matrix products per chunk of
    replicates instead of a loop over them.
    """
    n_images = {v.shape[1] for v in values.values()}
    if len(n_images) != 1:
        raise TagrankError(f"the methods are scored on different numbers of images {sorted(n_images)}")
    n = n_images.pop()
    image_rng = np.random.default_rng(seed)
    seed_rng = np.random.default_rng(np.random.SeedSequence(seed).spawn(1)[0])
    out: dict[str, list[np.ndarray]] = {m: [] for m in values}
    chunk = max(1, min(n_boot, 2**22 // n))  # replicates at a time: a few tens of MB whatever the test set
    for start in range(0, n_boot, chunk):
        c = min(chunk, n_boot - start)
        idx = image_rng.integers(0, n, size=(c, n))
        counts = np.bincount((idx + n * np.arange(c)[:, None]).ravel(), minlength=c * n).reshape(c, n)
        for m, v in values.items():
            n_seeds = v.shape[0]
            image_means = np.tensordot(counts.astype(np.float64), v, axes=([1], [1])) / n  # [c, n_seeds, ...]
            picks = seed_rng.integers(0, n_seeds, size=(c, n_seeds))
            weights = np.bincount((picks + n_seeds * np.arange(c)[:, None]).ravel(),
                                  minlength=c * n_seeds).reshape(c, n_seeds) / n_seeds
            out[m].append(np.einsum("cs,cs...->c...", weights, image_means))
    return {m: np.concatenate(parts) for m, parts in out.items()}


def percentile_ci(replicates: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    alpha = (1.0 - level) / 2
    return (float(np.quantile(replicates, alpha)), float(np.quantile(replicates, 1 - alpha)))


def _std(values: list[float]) -> float:
    return float(np.std(values, ddof=1)) if len(values) > 1 else math.nan


def summarise(scores: Scores, reference: str = REFERENCE, n_boot: int = N_BOOT, seed: int = 0) -> list[Row]:
    """One :class:`Row` per method of :func:`image_scores`, in the paper's order (methods it does not
    know come after)."""
    data = {r.data for rs in scores.runs.values() for r in rs}
    if len(data) > 1:
        raise TagrankError(f"the runs are on different datasets {sorted(data)}; summarise one dataset at a time")
    paper = PAPER.get(data.pop(), {})
    reps = seed_image_bootstrap(scores.values, n_boot, seed)  # m -> [n_boot, 2]: (NDCG, P)
    rows = []
    for m, rs in scores.runs.items():
        row = Row(method=m, label=label(m), seeds=[r.seed for r in rs], n_images=len(scores.images),
                  ndcg=float(np.mean([r.metrics["ndcg_mean"] for r in rs])),
                  ndcg_std=_std([float(r.metrics["ndcg_mean"]) for r in rs]),
                  ndcg_ci=percentile_ci(reps[m][:, 0]),
                  p=float(np.mean([r.metrics["p_mean"] for r in rs])),
                  p_std=_std([float(r.metrics["p_mean"]) for r in rs]),
                  p_ci=percentile_ci(reps[m][:, 1]), paper=paper.get(m), n_boot=n_boot)
        for name, mean_at, std_at in (("ndcg", row.ndcg_at, row.ndcg_at_std), ("p", row.p_at, row.p_at_std)):
            for k in range(1, rs[0].top_k + 1):
                vals = [float(r.metrics[f"{name}@{k}"]) for r in rs]
                mean_at.append(float(np.mean(vals)))
                std_at.append(_std(vals))
        if reference in reps and m != reference:
            row.delta = float(scores.values[m][..., 0].mean() - scores.values[reference][..., 0].mean())
            row.delta_ci = percentile_ci(reps[m][:, 0] - reps[reference][:, 0])
        rows.append(row)
    if scores.person is not None:
        rows += loo_rows(scores, rows, n_boot, seed)
    return rows


def loo_rows(scores: Scores, rows: list[Row], n_boot: int = N_BOOT, seed: int = 0) -> list[Row]:
    """The LOO columns of ``rows`` (filled in place) and the person's row (returned): means over seeds of
    means over the images with >= 2 lists, std over seeds, and intervals from the two-level bootstrap on
    those images; the person has one 'seed', so its interval resamples the images alone."""
    values = {**scores.loo, PERSON: scores.person}
    reps = seed_image_bootstrap(values, n_boot, seed)
    person = Row(method=PERSON, label=PERSON_LABEL, seeds=[], n_images=len(scores.loo_images), ndcg=math.nan,
                 ndcg_std=math.nan, ndcg_ci=None, p=math.nan, p_std=math.nan, p_ci=None, n_boot=n_boot,
                 ndcg_at=[float(v) for v in scores.person_at[:, 0]], p_at=[float(v) for v in scores.person_at[:, 1]],
                 ndcg_at_std=[math.nan] * len(scores.person_at), p_at_std=[math.nan] * len(scores.person_at))
    for row in rows + [person]:
        per_seed = values[row.method].mean(axis=1)  # [n_seeds, 2]
        row.ndcg_loo, row.p_loo = (float(v) for v in per_seed.mean(axis=0))
        row.ndcg_loo_std, row.p_loo_std = _std(list(per_seed[:, 0])), _std(list(per_seed[:, 1]))
        row.ndcg_loo_ci, row.p_loo_ci = percentile_ci(reps[row.method][:, 0]), percentile_ci(reps[row.method][:, 1])
        row.n_loo_images = len(scores.loo_images)
    return [person]
