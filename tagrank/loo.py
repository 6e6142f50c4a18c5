"""Leave one annotator out (LOO): a method and a person scored on the same ground truths (issue 24).

For an image with n >= 2 annotators' ranked lists, each list in turn is held out and the merge of the
other n - 1 (by the converters' own mean-rank rule, :func:`tagrank.data.sources.raw.merge_ranked`) is the
ground truth. A method's list is scored against each of those n merges and the n scores averaged; *the
person* is the held-out list itself scored against the same merge. Scores are means over k = 1..k_max of
NDCG@k and P@k (:mod:`tagrank.metrics`), as Table 1. Why: the merged list of all n lists contains the
held-out person's own list, so scoring a person against it would flatter the person; against the other
n - 1 both the method and the person meet a ground truth that neither helped to make.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from tagrank.data.sources.raw import merge_ranked
from tagrank.metrics import ndcg_at_k, precision_at_k


def at_k(predicted: Sequence[str], truth: Sequence[str], k_max: int = 10,
         relevance: str = "linear") -> np.ndarray:
    """[k_max, 2]: (NDCG@k, P@k) for k = 1..k_max of one list against one ground truth."""
    return np.array([(ndcg_at_k(predicted, truth, k, relevance), precision_at_k(predicted, truth, k))
                     for k in range(1, k_max + 1)], dtype=np.float64)


def mean_scores(predicted: Sequence[str], truth: Sequence[str], k_max: int = 10,
                relevance: str = "linear") -> tuple[float, float]:
    """(mean NDCG@k, mean P@k) over k = 1..k_max of one list against one ground truth."""
    ndcg, p = at_k(predicted, truth, k_max, relevance).mean(axis=0)
    return float(ndcg), float(p)


def loo_at_k(predicted: Sequence[str], lists: Sequence[Sequence[str]], k_max: int = 10,
             relevance: str = "linear") -> tuple[np.ndarray, np.ndarray] | None:
    """LOO scores of one image at each k: ([k_max, 2] of the method's ``predicted`` list, [k_max, 2] of
    the person), each (NDCG@k, P@k) averaged over the n held-out merges; None when fewer than two
    non-empty lists (no protocol to run: the synthetic data has one list per image). Fig. 3 draws the
    person's curve from these; :func:`loo_scores` averages them over k."""
    lists = [list(lst) for lst in lists if lst]
    if len(lists) < 2:
        return None
    method, person = np.zeros((k_max, 2)), np.zeros((k_max, 2))
    for i, held_out in enumerate(lists):
        truth = merge_ranked(lists[:i] + lists[i + 1:])
        method += at_k(predicted, truth, k_max, relevance)
        person += at_k(held_out, truth, k_max, relevance)
    return method / len(lists), person / len(lists)


def loo_scores(predicted: Sequence[str], lists: Sequence[Sequence[str]], k_max: int = 10,
               relevance: str = "linear") -> dict[str, float] | None:
    """LOO scores of one image: ``ndcg_loo``/``p_loo`` of the method's ``predicted`` list and
    ``person_ndcg_loo``/``person_p_loo`` of the held-out lists, means over k = 1..k_max; None when
    fewer than two non-empty lists."""
    both = loo_at_k(predicted, lists, k_max, relevance)
    if both is None:
        return None
    (ndcg, p), (person_ndcg, person_p) = (a.mean(axis=0) for a in both)
    return {"ndcg_loo": float(ndcg), "p_loo": float(p), "person_ndcg_loo": float(person_ndcg),
            "person_p_loo": float(person_p)}


def loo_summary(predicted: Sequence[Sequence[str]], lists: Sequence[Sequence[Sequence[str]]], k_max: int = 10,
                relevance: str = "linear") -> dict[str, float] | None:
    """The LOO block of a run's ``metrics.json``: means over the images with >= 2 non-empty lists of
    :func:`loo_scores` (``images``: how many); None when no image has two (one list per image)."""
    scored = [s for s in (loo_scores(pred, ls, k_max, relevance) for pred, ls in zip(predicted, lists)) if s]
    if not scored:
        return None
    out = {key: float(np.mean([s[key] for s in scored])) for key in scored[0]}
    return {**out, "images": len(scored)}


def format_loo(summary: dict[str, float], k_max: int = 10, title: str = "") -> str:
    """The LOO table ``tagrank-train`` and ``tagrank-eval`` print under the standard one."""
    head = (f"leave one annotator out{': ' + title if title else ''} ({summary['images']} images with >= 2 lists; "
            f"mean over k = 1..{k_max})")
    rows = [("", "NDCG", "P"), ("this model", f"{summary['ndcg_loo']:.4f}", f"{summary['p_loo']:.4f}"),
            ("a person", f"{summary['person_ndcg_loo']:.4f}", f"{summary['person_p_loo']:.4f}")]
    return "\n".join([head] + [f"  {a:<12} {b:>7} {c:>7}" for a, b, c in rows])
