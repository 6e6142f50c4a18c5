"""The paper's metrics against hand-computed cases and scikit-learn's ndcg_score."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch
from sklearn.metrics import ndcg_score

from tagrank.metrics import RankingMetrics, format_table, ndcg_at_k, precision_at_k, relevance_of


def test_hand_computed_ndcg():
    truth = ["a", "b", "c"]  # linear relevance 3, 2, 1
    assert ndcg_at_k(["a", "b", "c"], truth, 3) == pytest.approx(1.0)
    # DCG@2 = (2^2-1)/1 + (2^3-1)/log2(3) = 7.416508; IDCG@2 = 7 + 3/log2(3) = 8.892789
    assert ndcg_at_k(["b", "a"], truth, 2) == pytest.approx(7.416508 / 8.892789, abs=1e-6)
    # A wrong tag first: DCG@1 = 0.
    assert ndcg_at_k(["x", "a"], truth, 1) == 0.0
    # k beyond both lists: IDCG stops at |G|, DCG at |P|. DCG = 7/log2(3) ; IDCG = 7 + 3/log2(3) + 1/2
    assert ndcg_at_k(["x", "a"], truth, 10) == pytest.approx((7 / math.log2(3)) / (7 + 3 / math.log2(3) + 0.5))
    # inverse_log: rel(r) = 1/log2(1+r): a=1, b=0.6309
    got = ndcg_at_k(["b"], ["a", "b"], 1, relevance="inverse_log")
    assert got == pytest.approx((2 ** (1 / math.log2(3)) - 1) / 1.0)
    assert ndcg_at_k(["b", "a"], ["a", "b"], 2, relevance="binary") == pytest.approx(1.0)


def test_hand_computed_precision():
    assert precision_at_k(["a", "x", "b"], ["a", "b", "c"], 1) == 1.0
    assert precision_at_k(["a", "x", "b"], ["a", "b", "c"], 2) == 0.5
    assert precision_at_k(["a", "x", "b"], ["a", "b", "c"], 3) == pytest.approx(2 / 3)
    assert precision_at_k(["a"], ["a", "b"], 4) == 0.25  # missing predictions count as misses


def test_bad_arguments():
    with pytest.raises(ValueError, match="empty ground truth"):
        ndcg_at_k(["a"], [], 1)
    with pytest.raises(ValueError, match="k must be"):
        precision_at_k(["a"], ["a"], 0)
    with pytest.raises(ValueError, match="relevance"):
        relevance_of(1, 2, "quadratic")


@pytest.mark.parametrize("kind", ["linear", "inverse_log", "binary"])
def test_ndcg_matches_sklearn(kind):
    """sklearn's ndcg_score with gains 2^rel - 1 and scores that encode our ranking is the same NDCG."""
    rng = random.Random(0)
    vocab = list(range(25))
    for _ in range(200):
        truth = rng.sample(vocab, rng.randint(1, 8))
        predicted = rng.sample(vocab, len(vocab))  # a full ranking: no ties for sklearn to average
        gains = np.zeros(len(vocab))
        for r, tag in enumerate(truth, start=1):
            gains[tag] = 2 ** relevance_of(r, len(truth), kind) - 1
        scores = np.zeros(len(vocab))
        for p, tag in enumerate(predicted):
            scores[tag] = len(vocab) - p
        for k in (1, 3, 5, 10):
            want = ndcg_score([gains], [scores], k=k)
            assert ndcg_at_k(predicted, truth, k, relevance=kind) == pytest.approx(want, abs=1e-9)


def _random_batch(rng: random.Random, n: int, vocab: int, k: int):
    preds = torch.full((n, k), -1, dtype=torch.long)
    target = torch.full((n, 7), -1, dtype=torch.long)
    lists = []
    for i in range(n):
        truth = rng.sample(range(vocab), rng.randint(0, 7))  # some empty
        pred = rng.sample(range(vocab), rng.randint(1, k))  # some shorter than k
        target[i, : len(truth)] = torch.tensor(truth, dtype=torch.long)
        preds[i, : len(pred)] = torch.tensor(pred, dtype=torch.long)
        lists.append((pred, truth))
    return preds, target, lists


@pytest.mark.parametrize("kind", ["linear", "inverse_log", "binary"])
def test_metric_class_equals_plain_functions(kind):
    rng = random.Random(1)
    metric = RankingMetrics(k_max=10, relevance=kind)
    all_lists = []
    for _ in range(4):
        preds, target, lists = _random_batch(rng, 40, 15, 10)
        metric.update(preds, target)
        all_lists += lists
    out = metric.compute()
    scored = [(p, t) for p, t in all_lists if t]
    assert int(out["n_empty"]) == len(all_lists) - len(scored) > 0
    assert int(out["n_images"]) == len(scored)
    for k in range(1, 11):
        want_ndcg = np.mean([ndcg_at_k(p, t, k, relevance=kind) for p, t in scored])
        want_p = np.mean([precision_at_k(p, t, k) for p, t in scored])
        assert float(out[f"ndcg@{k}"]) == pytest.approx(want_ndcg, abs=1e-12)
        assert float(out[f"p@{k}"]) == pytest.approx(want_p, abs=1e-12)
    assert float(out["ndcg_mean"]) == pytest.approx(np.mean([float(out[f"ndcg@{k}"]) for k in range(1, 11)]))


def test_metric_states_merge_like_ddp():
    """Two processes' states summed (what DDP's sync does) equal one process over all the data."""
    rng = random.Random(2)
    preds, target, _ = _random_batch(rng, 64, 12, 10)
    whole, left, right = RankingMetrics(), RankingMetrics(), RankingMetrics()
    whole.update(preds, target)
    left.update(preds[:30], target[:30])
    right.update(preds[30:], target[30:])
    left.merge_state(right)
    a, b = whole.compute(), left.compute()
    assert all(torch.equal(a[key], b[key]) or abs(float(a[key] - b[key])) < 1e-12 for key in a)


def test_format_table_lists_every_k():
    rng = random.Random(3)
    metric = RankingMetrics()
    metric.update(*_random_batch(rng, 8, 12, 10)[:2])
    text = format_table({k: float(v) for k, v in metric.compute().items()})
    assert "@10" in text and "NDCG" in text and "mean" in text


def test_a_repeated_or_missing_prediction_is_a_miss():
    truth = ["a", "b", "c"]  # linear relevance 3, 2, 1
    # "a" twice: the second "a" gains nothing, exactly as if that place were empty.
    assert ndcg_at_k(["a", "a", "b"], truth, 3) == pytest.approx(ndcg_at_k(["a", "x", "b"], truth, 3))
    assert ndcg_at_k(["a", "a", "b"], truth, 3) < ndcg_at_k(["a", "b", "c"], truth, 3)
    assert precision_at_k(["a", "a", "b"], truth, 3) == pytest.approx(2 / 3)
    assert precision_at_k(["a", "a", "a"], truth, 3) == pytest.approx(1 / 3)
    # A list that stopped early (one tag of k = 3) scores its missing places as misses.
    assert precision_at_k(["a"], truth, 3) == pytest.approx(1 / 3)
    assert ndcg_at_k(["a"], truth, 3) == pytest.approx(ndcg_at_k(["a", "x", "y"], truth, 3))


@pytest.mark.parametrize("kind", ["linear", "inverse_log", "binary"])
def test_metric_class_scores_repeats_and_padding_like_plain_functions(kind):
    """Lists with repeated tags and -1 padding (a captioning decoder's output): both forms agree."""
    rng = random.Random(4)
    metric = RankingMetrics(k_max=10, relevance=kind)
    preds = torch.full((60, 10), -1, dtype=torch.long)
    target = torch.full((60, 6), -1, dtype=torch.long)
    lists = []
    for i in range(60):
        truth = rng.sample(range(8), rng.randint(1, 6))
        pred = [rng.randrange(8) for _ in range(rng.randint(0, 10))]  # repeats likely, some short
        target[i, : len(truth)] = torch.tensor(truth)
        preds[i, : len(pred)] = torch.tensor(pred, dtype=torch.long)
        lists.append((pred, truth))
    assert sum(len(set(p)) < len(p) for p, _ in lists) > 30 and sum(len(p) < 10 for p, _ in lists) > 30
    metric.update(preds, target)
    out = metric.compute()
    for k in range(1, 11):
        want_ndcg = np.mean([ndcg_at_k(p, t, k, kind) for p, t in lists])
        want_p = np.mean([precision_at_k(p, t, k) for p, t in lists])
        assert float(out[f"ndcg@{k}"]) == pytest.approx(want_ndcg, abs=1e-12)
        assert float(out[f"p@{k}"]) == pytest.approx(want_p, abs=1e-12)
    # A repeat never scores more than the list with that place left empty.
    repeated = RankingMetrics(k_max=3, relevance=kind)
    repeated.update(torch.tensor([[1, 1, 1]]), torch.tensor([[1, 2]]))
    single = RankingMetrics(k_max=3, relevance=kind)
    single.update(torch.tensor([[1, -1, -1]]), torch.tensor([[1, 2]]))
    a, b = repeated.compute(), single.compute()
    assert all(float(a[key]) == float(b[key]) for key in a)
