"""Leave one annotator out (issue 24) on a 3-annotator case computed by hand, k = 1..2.

Annotators: A = [a, b], B = [b, a], C = [a, c]. The held-out merges (mean 0-based rank, a list that
does not name a tag ranks it just after its last tag, ties by first appearance):
- hold out A: merge(B, C): a = 1 + 0 = 1, b = 0 + 2 = 2, c = 2 + 1 = 3      -> [a, b, c]
- hold out B: merge(A, C): a = 0 + 0 = 0, b = 1 + 2 = 3, c = 2 + 1 = 3 (tie, b first) -> [a, b, c]
- hold out C: merge(A, B): a = 0 + 1 = 1, b = 1 + 0 = 1 (tie, a first)      -> [a, b]
Linear relevance: in [a, b, c] a=3, b=2, c=1 (gains 7, 3, 1); in [a, b] a=2, b=1 (gains 3, 1).
"""

import math

import pytest

from tagrank.data.sources.raw import merge_ranked
from tagrank.loo import loo_scores

L3 = math.log2(3)  # the discount of place 2
LISTS = [["a", "b"], ["b", "a"], ["a", "c"]]


def test_held_out_merges_are_the_hand_computed_ones():
    assert merge_ranked([LISTS[1], LISTS[2]]) == ["a", "b", "c"]
    assert merge_ranked([LISTS[0], LISTS[2]]) == ["a", "b", "c"]
    assert merge_ranked([LISTS[0], LISTS[1]]) == ["a", "b"]


def test_method_scored_against_each_held_out_merge_and_averaged():
    # method [b, c]: against [a, b, c] NDCG@1 = 3/7, NDCG@2 = (3 + 1/L3) / (7 + 3/L3), P@1 = P@2 = 1;
    # against [a, b] NDCG@1 = 1/3, NDCG@2 = 1 / (3 + 1/L3), P@1 = 1, P@2 = 1/2.
    abc = (3 / 7 + (3 + 1 / L3) / (7 + 3 / L3)) / 2
    ab = (1 / 3 + 1 / (3 + 1 / L3)) / 2
    got = loo_scores(["b", "c"], LISTS, k_max=2)
    assert got["ndcg_loo"] == pytest.approx((2 * abc + ab) / 3)
    assert got["p_loo"] == pytest.approx((1 + 1 + 0.75) / 3)


def test_person_is_each_held_out_list_against_the_same_merge():
    # A = [a, b] vs [a, b, c]: perfect, NDCG 1, P 1.
    # B = [b, a] vs [a, b, c]: NDCG@1 = 3/7, NDCG@2 = (3 + 7/L3) / (7 + 3/L3); P 1, 1.
    # C = [a, c] vs [a, b]: NDCG@1 = 1, NDCG@2 = 3 / (3 + 1/L3); P@1 = 1, P@2 = 1/2.
    a = 1.0
    b = (3 / 7 + (3 + 7 / L3) / (7 + 3 / L3)) / 2
    c = (1 + 3 / (3 + 1 / L3)) / 2
    got = loo_scores(["b", "c"], LISTS, k_max=2)
    assert got["person_ndcg_loo"] == pytest.approx((a + b + c) / 3)
    assert got["person_p_loo"] == pytest.approx((1 + 1 + 0.75) / 3)


def test_one_list_has_no_protocol():
    assert loo_scores(["a"], [["a", "b"]]) is None
    assert loo_scores(["a"], [["a", "b"], []]) is None
