"""Table 1's numbers: per-image scores of every run, and per method the means, spreads and intervals.

:func:`summarise` gives per method the mean over k = 1..K of NDCG@k and P@k, as mean +- std over seeds
(sample std) and a 95% bootstrap confidence interval over test images (each image's score averaged
over seeds, images resampled with replacement), and the paired bootstrap interval of each method's
NDCG minus the reference method's (the LSTM): the question "is it really better here?".
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from tagrank.errors import TagrankError
from tagrank.metrics import ndcg_at_k, precision_at_k
from tagrank.report.methods import PAPER, REFERENCE, label, row_order
from tagrank.report.runs import Run


@dataclass
class Row:
    """One method's line of Table 1 (all numbers are means over k = 1..K unless named @k)."""

    method: str
    label: str
    seeds: list[int]
    n_images: int
    ndcg: float
    ndcg_std: float
    ndcg_ci: tuple[float, float]
    p: float
    p_std: float
    p_ci: tuple[float, float]
    delta: float | None = None  # NDCG minus the reference method's, on the same images
    delta_ci: tuple[float, float] | None = None
    paper: tuple[float, float] | None = None
    ndcg_at: list[float] = field(default_factory=list)  # mean over seeds of NDCG@k, k = 1..K
    ndcg_at_std: list[float] = field(default_factory=list)
    p_at: list[float] = field(default_factory=list)
    p_at_std: list[float] = field(default_factory=list)


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


def bootstrap_ci(values: np.ndarray, n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` (resampled with replacement)."""
    values = np.asarray(values, dtype=np.float64)
    if len(values) == 0:
        return (math.nan, math.nan)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(values), size=(n_boot, len(values)))
    means = values[idx].mean(axis=1)
    alpha = (1.0 - level) / 2
    return (float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha)))


def _std(values: list[float]) -> float:
    return float(np.std(values, ddof=1)) if len(values) > 1 else math.nan


def summarise(runs: list[Run], reference: str = REFERENCE, n_boot: int = 2000, seed: int = 0) -> list[Row]:
    """One :class:`Row` per method, in the paper's order (methods it does not know come after)."""
    if not runs:
        raise TagrankError("no runs to summarise")
    data = {r.data for r in runs}
    if len(data) > 1:
        raise TagrankError(f"the runs are on different datasets {sorted(data)}; summarise one dataset at a time")
    paper = PAPER.get(data.pop(), {})
    by_method: dict[str, list[Run]] = {}
    for r in sorted(runs, key=lambda r: r.seed):
        by_method.setdefault(r.method, []).append(r)
    scores = {m: [per_image_scores(r) for r in rs] for m, rs in by_method.items()}
    for m, rs in by_method.items():  # the recomputed per-image scores must reproduce each run's metrics
        for r, s in zip(rs, scores[m]):
            mean = float(np.mean([v[0] for v in s.values()])) if s else math.nan
            if abs(mean - float(r.metrics["ndcg_mean"])) > 1e-3:
                raise TagrankError(f"{r.path}: predictions.jsonl gives NDCG {mean:.4f} but metrics.json says "
                                   f"{float(r.metrics['ndcg_mean']):.4f}")
    images = sorted(set.intersection(*(set(s) for ss in scores.values() for s in ss)))
    if not images:
        raise TagrankError("the runs share no test image")

    def seed_mean(m: str, which: int) -> np.ndarray:  # [n_images]: each image's score averaged over seeds
        return np.mean([[s[img][which] for img in images] for s in scores[m]], axis=0)

    ref_ndcg = seed_mean(reference, 0) if reference in scores else None
    rows = []
    for m in sorted(by_method, key=row_order):
        rs = by_method[m]
        k_max = rs[0].top_k
        ndcg, prec = seed_mean(m, 0), seed_mean(m, 1)
        row = Row(method=m, label=label(m), seeds=[r.seed for r in rs], n_images=len(images),
                  ndcg=float(np.mean([r.metrics["ndcg_mean"] for r in rs])),
                  ndcg_std=_std([float(r.metrics["ndcg_mean"]) for r in rs]),
                  ndcg_ci=bootstrap_ci(ndcg, n_boot, seed),
                  p=float(np.mean([r.metrics["p_mean"] for r in rs])),
                  p_std=_std([float(r.metrics["p_mean"]) for r in rs]),
                  p_ci=bootstrap_ci(prec, n_boot, seed), paper=paper.get(m))
        for name, mean_at, std_at in (("ndcg", row.ndcg_at, row.ndcg_at_std), ("p", row.p_at, row.p_at_std)):
            for k in range(1, k_max + 1):
                vals = [float(r.metrics[f"{name}@{k}"]) for r in rs]
                mean_at.append(float(np.mean(vals)))
                std_at.append(_std(vals))
        if ref_ndcg is not None and m != reference:
            diff = ndcg - ref_ndcg
            row.delta, row.delta_ci = float(diff.mean()), bootstrap_ci(diff, n_boot, seed)
        rows.append(row)
    return rows
