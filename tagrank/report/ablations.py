"""Issue 15's ablations, computed from finished runs: set against order, which relevance, which order.

All three rescore the saved ``predictions.jsonl`` (no model, no data) on the test images every run
shares (:func:`~tagrank.report.stats.image_scores`, which also checks each run against its
``metrics.json``), take means over seeds of means over images, and draw their 95% intervals from the
same two-level bootstrap as Table 1 (:func:`~tagrank.report.stats.seed_image_bootstrap`).

- **Set against order** (:func:`set_vs_order`): how much of a method's NDCG is lost to the order of its
  list rather than to what it found. Each predicted list is rescored with the ground-truth tags it
  found moved to the front in ground-truth order (:func:`found_in_human_order`): the best ordering of
  the same tags, so the gap between the two is what ordering costs the method.
- **Which relevance** (:func:`relevance_ablation`): the paper does not state its relevance grade, so
  Table 1's NDCG under ``linear``, ``inverse_log`` and ``binary``, and whether the methods' ranking
  changes with it.
- **Which order to learn from** (:func:`order_rows`): runs that differ only in ``data.train_order``,
  scored (as always) on the human order, each set against the human-order run.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, replace

import numpy as np
from omegaconf import OmegaConf

from tagrank.errors import TagrankError
from tagrank.metrics import RELEVANCES
from tagrank.report.methods import label
from tagrank.report.runs import Run
from tagrank.report.stats import (N_BOOT, Row, Scores, image_scores, per_image_scores, percentile_ci,
                                  seed_image_bootstrap, summarise)
from tagrank.report.tables import interval_note, seed_counts, table_cells

REFERENCE_RELEVANCE = "linear"  # Table 1's grade (metrics.py's default)
TRAIN_ORDERS = {"human": "human (the annotators' order)", "frequency": "frequency (most frequent tag first)",
                "rare_first": "rare_first (least frequent tag first)", "random": "random (fixed per image)"}


def found_in_human_order(predicted: Sequence[Hashable], truth: Sequence[Hashable], k: int) -> list[Hashable]:
    """The first ``k`` predicted tags with the ground-truth tags among them first, in ground-truth order,
    then the others (tags not in the ground truth, repeats) in their predicted order: the same tags, the
    same length, ordered as well as they can be.

    Its NDCG@j is at least the real list's for every j <= k: relevance never rises with ground-truth
    rank, so the found tags' gains sorted from high to low on the highest discounts is the largest DCG
    any order of those tags reaches (the rearrangement inequality).
    """
    top = list(predicted[:k])
    found = [t for t in truth if t in set(top)]
    rest, moved = [], set(found)
    for t in top:
        if t in moved:
            moved.discard(t)  # its first occurrence went to the front; a repeat stays a miss
        else:
            rest.append(t)
    return found + rest


def rescored(scores: Scores, change: Callable[[Run], Run]) -> dict[str, np.ndarray]:
    """Per method, ``[n_seeds, n_images, 2]`` per-image (NDCG, P) of each run after ``change``, on
    ``scores.images`` in their order (so it pairs image by image with ``scores.values``)."""
    out = {}
    for m, rs in scores.runs.items():
        per_run = [per_image_scores(change(r)) for r in rs]
        out[m] = np.array([[s[img] for img in scores.images] for s in per_run], dtype=np.float64)
    return out


def in_human_order(run: Run) -> Run:
    """The run with every predicted list replaced by :func:`found_in_human_order` of it."""
    return replace(run, predictions=[{**p, "predicted": found_in_human_order(p["predicted"], p["truth"], run.top_k)}
                                     for p in run.predictions])


@dataclass
class SetOrderRow:
    """One method: its NDCG, the NDCG of its found tags in human order, and the gap (all means over k)."""

    method: str
    label: str
    seeds: list[int]
    ndcg: float
    ordered: float
    ordered_ci: tuple[float, float]
    gap: float  # ordered - ndcg: what ordering costs the method
    gap_ci: tuple[float, float]


def set_vs_order(scores: Scores, n_boot: int = N_BOOT, seed: int = 0) -> list[SetOrderRow]:
    """:class:`SetOrderRow` per method of ``scores``, in its order. Raises if any image's reordered list
    scores below the real one, which the construction rules out (a bug, not a result)."""
    ordered = rescored(scores, in_human_order)
    values = {}
    for m, real in scores.values.items():
        worse = np.argwhere(ordered[m][..., 0] < real[..., 0] - 1e-9)
        if len(worse):
            s, i = worse[0]
            raise RuntimeError(f"{scores.runs[m][s].path}: {scores.images[i]} scores lower with its found tags in "
                               "human order; found_in_human_order is wrong")
        values[m] = np.stack([real[..., 0], ordered[m][..., 0]], axis=-1)  # [n_seeds, n_images, 2]
    reps = seed_image_bootstrap(values, n_boot, seed)
    return [SetOrderRow(method=m, label=label(m), seeds=[r.seed for r in scores.runs[m]], ndcg=float(v[..., 0].mean()),
                        ordered=float(v[..., 1].mean()), ordered_ci=percentile_ci(reps[m][:, 1]),
                        gap=float((v[..., 1] - v[..., 0]).mean()), gap_ci=percentile_ci(reps[m][:, 1] - reps[m][:, 0]))
            for m, v in values.items()]


@dataclass
class RelevanceAblation:
    """Table 1's NDCG (mean over k) under each relevance grade, and the methods' ranking under each."""

    methods: list[str]  # Table 1's row order
    ndcg: dict[str, dict[str, float]]  # relevance -> method -> NDCG
    ci: dict[str, dict[str, tuple[float, float]]]  # relevance -> method -> 95% interval
    ranking: dict[str, list[str]]  # relevance -> methods, best first
    # relevance -> (a, b, interval of NDCG(a) - NDCG(b) under it) for each pair it orders a above b and
    # the linear grade b above a; paired by image, each method's seeds resampled.
    swaps: dict[str, list[tuple[str, str, tuple[float, float]]]]


def relevance_ablation(scores: Scores, n_boot: int = N_BOOT, seed: int = 0) -> RelevanceAblation:
    ndcg, ci, reps = {}, {}, {}
    for rel in RELEVANCES:
        values = {m: v[..., :1] for m, v in rescored(scores, lambda r, rel=rel: replace(r, relevance=rel)).items()}
        reps[rel] = {m: r[:, 0] for m, r in seed_image_bootstrap(values, n_boot, seed).items()}
        ndcg[rel] = {m: float(v.mean()) for m, v in values.items()}
        ci[rel] = {m: percentile_ci(reps[rel][m]) for m in values}
    # Best first; a tie (equal to 9 decimals: a method found the same tags in another order, which binary
    # relevance cannot tell apart) keeps the linear grade's order, and that one Table 1's.
    ref = sorted(scores.runs, key=lambda m: -round(ndcg[REFERENCE_RELEVANCE][m], 9))
    ranking = {rel: sorted(ref, key=lambda m: -round(ndcg[rel][m], 9)) for rel in RELEVANCES}
    swaps = {rel: [(a, b, percentile_ci(reps[rel][a] - reps[rel][b])) for i, a in enumerate(order)
                   for b in order[i + 1:] if ref.index(a) > ref.index(b)] for rel, order in ranking.items()}
    return RelevanceAblation(methods=list(scores.runs), ndcg=ndcg, ci=ci, ranking=ranking, swaps=swaps)


def train_order(run: Run) -> str:
    """The run's ``data.train_order`` (runs from before the setting learnt from the human order)."""
    cfg = OmegaConf.load(run.path / ".hydra/config.yaml")
    return str(OmegaConf.select(cfg, "data.train_order", default="human"))


def order_rows(runs: list[Run], n_boot: int = N_BOOT, seed: int = 0) -> list[Row]:
    """Table 1's rows with one row per ``data.train_order`` instead of per method (one method's runs),
    each order's NDCG set against the human order's on the same images."""
    methods = sorted({r.method for r in runs})
    if len(methods) != 1:
        raise TagrankError(f"the order ablation compares one method's runs; these are of {methods}")
    by_order = [replace(r, method=train_order(r)) for r in runs]
    rows = summarise(image_scores(by_order), reference="human", n_boot=n_boot, seed=seed)
    for row in rows:
        row.label = TRAIN_ORDERS.get(row.method, row.label)  # the person's row (caption data) keeps its label
    known = list(TRAIN_ORDERS)
    return sorted(rows, key=lambda r: known.index(r.method) if r.method in known else len(known))


# -- markdown -------------------------------------------------------------------------------------
def _ci(ci: tuple[float, float]) -> str:
    return f"[{ci[0]:.4f}, {ci[1]:.4f}]"


def _signed_ci(ci: tuple[float, float]) -> str:
    return f"[{ci[0]:+.4f}, {ci[1]:+.4f}]"


def _header(command: str, title: str, text: str) -> list[str]:
    return [f"<!-- {command} -->", f"# {title}", "", text, ""]


def set_vs_order_markdown(rows: list[SetOrderRow], data: str, n_images: int, command: str) -> str:
    lines = _header(command, f"Set against order on `{data}`",
                    f"NDCG (mean over k = 1..10) on the test split ({n_images} images), mean over {seed_counts(rows)}, "
                    "beside "
                    "the NDCG of the same predicted lists with the ground-truth tags each found moved to the front in "
                    "the ground-truth order (then its other tags): the best order of what it found. The gap is what "
                    "ordering costs the method; what stays below 1 is what it did not find. 95% intervals: the "
                    "two-level bootstrap of Table 1 (test images and seeds resampled together).")
    lines += ["| Method | NDCG | NDCG, found tags in human order [95% CI] | Ordering cost [95% CI] |",
              "|---|---|---|---|"]
    lines += [f"| {r.label} | {r.ndcg:.4f} | {r.ordered:.4f} {_ci(r.ordered_ci)} | "
              f"{r.gap:+.4f} {_signed_ci(r.gap_ci)} |" for r in rows]
    return "\n".join(lines) + "\n"


def relevance_markdown(result: RelevanceAblation, data: str, n_images: int, command: str) -> str:
    lines = _header(command, f"Which relevance on `{data}`",
                    f"Table 1's NDCG (mean over k = 1..10, test split, {n_images} images, mean over seeds) with the "
                    "relevance of the tag at ground-truth rank r of n set to `linear` n - r + 1 (Table 1), "
                    "`inverse_log` 1/log2(1 + r) or `binary` 1; (rank) is the method's place under that grade (equal "
                    "NDCGs keep their order under `linear`). "
                    "95% intervals: the two-level bootstrap of Table 1.")
    head = ["Method"] + [f"`{rel}` NDCG [95% CI] (rank)" for rel in RELEVANCES]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m in result.methods:
        cells = [f"{result.ndcg[rel][m]:.4f} {_ci(result.ci[rel][m])} ({result.ranking[rel].index(m) + 1})"
                 for rel in RELEVANCES]
        lines.append("| " + " | ".join([label(m)] + cells) + " |")
    lines.append("")
    for rel in RELEVANCES:
        order = " > ".join(label(m) for m in result.ranking[rel])
        if rel == REFERENCE_RELEVANCE:
            lines.append(f"- `{rel}`: {order}.")
        elif not result.swaps[rel]:
            lines.append(f"- `{rel}`: the same ranking as `{REFERENCE_RELEVANCE}`.")
        else:
            moved = "; ".join(f"{label(a)} above {label(b)} ({result.ndcg[rel][a] - result.ndcg[rel][b]:+.4f} "
                              f"{_signed_ci(ci)})" for a, b, ci in result.swaps[rel])
            lines.append(f"- `{rel}`: the ranking changes: {order}. Now {moved}.")
    return "\n".join(lines) + "\n"


def order_markdown(rows: list[Row], data: str, command: str) -> str:
    head, cells = table_cells(rows, reference="human")
    head[0] = "Training order"
    lines = _header(command, f"Which order to learn from on `{data}`",
                    f"The same method trained on each `data.train_order` and scored, like every run, on the human "
                    f"order of the test split ({rows[0].n_images} images): mean over k = 1..{len(rows[0].ndcg_at)} of "
                    f"NDCG@k and P@k, mean ± std over {seed_counts(rows)}. " + interval_note(rows))
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(line) + " |" for line in cells]
    return "\n".join(lines) + "\n"
