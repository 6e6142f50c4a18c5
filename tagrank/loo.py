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

from tagrank.data.sources.raw import merge_ranked
from tagrank.metrics import ndcg_at_k, precision_at_k


def mean_scores(predicted: Sequence[str], truth: Sequence[str], k_max: int = 10) -> tuple[float, float]:
    """(mean NDCG@k, mean P@k) over k = 1..k_max of one list against one ground truth."""
    ks = range(1, k_max + 1)
    return (
        sum(ndcg_at_k(predicted, truth, k) for k in ks) / k_max,
        sum(precision_at_k(predicted, truth, k) for k in ks) / k_max,
    )


def loo_scores(predicted: Sequence[str], lists: Sequence[Sequence[str]], k_max: int = 10) -> dict[str, float] | None:
    """LOO scores of one image: ``ndcg_loo``/``p_loo`` of the method's ``predicted`` list and
    ``person_ndcg_loo``/``person_p_loo`` of the held-out lists; None when fewer than two non-empty lists
    (no protocol to run: the synthetic data has one list per image)."""
    lists = [list(lst) for lst in lists if lst]
    if len(lists) < 2:
        return None
    method, person = [], []
    for i, held_out in enumerate(lists):
        truth = merge_ranked(lists[:i] + lists[i + 1:])
        method.append(mean_scores(predicted, truth, k_max))
        person.append(mean_scores(held_out, truth, k_max))
    n = len(lists)
    return {
        "ndcg_loo": sum(s[0] for s in method) / n,
        "p_loo": sum(s[1] for s in method) / n,
        "person_ndcg_loo": sum(s[0] for s in person) / n,
        "person_p_loo": sum(s[1] for s in person) / n,
    }
