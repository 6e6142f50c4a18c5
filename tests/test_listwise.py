"""The shared listwise losses (tagrank.models.listwise): each on a case checked by hand or by a second,
independent formula, and learning from every annotator's own list."""

from __future__ import annotations

import json
import math

import pytest
import torch

from tagrank.data.datamodule import annotator_lists
from tagrank.data.records import Record, Vocabulary
from tagrank.errors import TagrankError
from tagrank.metrics import RankingMetrics
from tagrank.models.base import plackett_luce_nll
from tagrank.models.label_query import LabelQueryDecoder
from tagrank.models.listwise import (lambdaloss_rows, listwise_loss, listwise_rows, neural_sort, neuralndcg_rows,
                                     plackett_luce_rows, sinkhorn)
from tagrank.models.scorer import ListwiseScorer
from tagrank.cli.train import train
from tagrank.pipeline import build_data, build_model

from .conftest import TINY, compose_cfg

LOSSES = ["plackett_luce", "listnet", "both", "lambdaloss", "neuralndcg"]


def test_the_per_list_plackett_luce_sums_to_the_stepwise_one():
    torch.manual_seed(0)
    scores = torch.randn(3, 9)
    target = torch.tensor([[4, 1, 7, -1], [2, -1, -1, -1], [-1, -1, -1, -1]])
    rows = plackett_luce_rows(scores, target)
    assert rows[2].item() == 0
    stepwise = plackett_luce_nll(scores[:, None].expand(-1, 4, -1), target)
    assert rows.sum().item() == pytest.approx(stepwise.item(), rel=1e-6)


def lambdaloss_by_pairs(scores: list[float], truth: list[int], mu: float = 10.0) -> float:
    """NDCG-Loss2++ written out pair by pair from Wang et al. (2018), eq. for NDCG-Loss2++, with linear
    relevance (a tag at place r of a list of n has grade n - r + 1, unlisted tags 0)."""
    n = len(truth)
    rel = [0] * len(scores)
    for r, tag in enumerate(truth):
        rel[tag] = n - r
    gain = [2.0 ** x - 1 for x in rel]
    ideal = sum(g / math.log2(2 + r) for r, g in enumerate(sorted(gain, reverse=True)))
    g = [x / ideal for x in gain]
    place = {tag: r + 1 for r, tag in enumerate(sorted(range(len(scores)), key=lambda t: -scores[t]))}
    total = 0.0
    for i in range(len(scores)):
        for j in range(len(scores)):
            if g[i] <= g[j]:
                continue
            gap = abs(place[i] - place[j])
            delta = abs(1 / math.log2(1 + gap) - 1 / math.log2(2 + gap))
            lambdarank = abs(1 / math.log2(1 + place[i]) - 1 / math.log2(1 + place[j]))
            weight = (mu * delta + lambdarank) * abs(g[i] - g[j])
            total -= weight * math.log2(1 / (1 + math.exp(-(scores[i] - scores[j]))))
    return total


@pytest.mark.parametrize("scores", [[0.5, 2.0, -1.0, 1.0], [3.0, 0.1, 2.5, -0.7, 0.2]])
def test_lambdaloss_matches_the_pairwise_definition(scores):
    truth = [2, 0, 3] if len(scores) > 4 else [2, 0]
    got = lambdaloss_rows(torch.tensor([scores], dtype=torch.float64), torch.tensor([truth]), "linear")
    assert got.item() == pytest.approx(lambdaloss_by_pairs(scores, truth), rel=1e-9)


def test_neural_sort_tends_to_the_sort_and_sinkhorn_makes_it_doubly_stochastic():
    scores = torch.tensor([[0.3, 2.0, -1.0, 1.1]])
    hard = neural_sort(scores, tau=1e-3)[0]
    assert hard.argmax(-1).tolist() == [1, 3, 0, 2]  # row r: the r-th largest score
    assert torch.allclose(hard.max(-1).values, torch.ones(4), atol=1e-4)
    soft = sinkhorn(neural_sort(scores, tau=1.0))
    assert torch.allclose(soft.sum(1), torch.ones(1, 4), atol=1e-5)
    assert torch.allclose(soft.sum(2), torch.ones(1, 4), atol=1e-5)


@pytest.mark.parametrize("vocab", [6, 40])  # 40: the slate (listed + top-scoring) is smaller than the vocabulary
def test_neuralndcg_at_a_low_temperature_is_the_metric(vocab):
    # A second formula: the project's own metric (tagrank.metrics), mean NDCG@k over k = 1..4, of the ranking by score.
    torch.manual_seed(1)
    scores = torch.randperm(vocab).double()[None] * 1.0  # distinct, 1 apart: the relaxed sort is nearly hard
    target = torch.tensor([[3, 0, 5, -1]])
    metric = RankingMetrics(4, "linear")
    metric.update(scores.topk(4).indices, target)
    exact = metric.compute()["ndcg_mean"].item()
    got = neuralndcg_rows(scores, target, "linear", top_k=4, tau=1e-2)
    assert 1 - got.item() == pytest.approx(exact, abs=1e-4)


@pytest.mark.parametrize("loss", LOSSES)
def test_the_perfect_ranking_loses_less_than_the_reversed_one_and_gradients_are_finite(loss):
    target = torch.tensor([[0, 1, 2, 3]])  # tags 4..7 unlisted
    perfect = torch.tensor([[4.0, 3.0, 2.0, 1.0, 0.0, -0.5, -1.0, -1.5]], requires_grad=True)
    reversed_ = torch.tensor([[-1.5, -1.0, -0.5, 0.0, 1.0, 2.0, 3.0, 4.0]], requires_grad=True)
    good = listwise_loss(perfect, target, loss, "linear", top_k=4)
    bad = listwise_loss(reversed_, target, loss, "linear", top_k=4)
    assert good.item() < bad.item()
    (good + bad).backward()
    assert torch.isfinite(perfect.grad).all() and torch.isfinite(reversed_.grad).all()
    assert reversed_.grad.abs().sum() > 0


@pytest.mark.parametrize("loss", LOSSES)
def test_an_empty_list_adds_nothing(loss):
    scores = torch.randn(2, 7, requires_grad=True)
    target = torch.tensor([[3, 1, -1], [-1, -1, -1]])
    rows = listwise_rows(scores, target, loss, "linear", 3)
    assert rows[1].item() == 0
    rows.sum().backward()
    assert torch.isfinite(scores.grad).all()


@pytest.mark.parametrize("loss", LOSSES)
def test_each_annotator_is_the_mean_of_the_single_list_losses(loss):
    torch.manual_seed(2)
    scores = torch.randn(2, 8)
    # image 0: two people's lists (and an absent third); image 1: one list
    lists = torch.tensor([[[1, 4, -1], [4, 6, 2], [-1, -1, -1]],
                          [[5, -1, -1], [-1, -1, -1], [-1, -1, -1]]])
    merged = torch.tensor([[4, 1, 6], [5, -1, -1]])
    each = listwise_loss(scores, merged, loss, "linear", 3, lists)
    single = [listwise_loss(scores[:1], lists[0, a:a + 1], loss, "linear", 3) for a in range(2)]
    second = listwise_loss(scores[1:], lists[1, :1], loss, "linear", 3)
    assert each.item() == pytest.approx(((single[0] + single[1]) / 2 + second).item() / 2, rel=1e-6)
    # one list per image: the same as learning from the merged list
    assert listwise_loss(scores, merged, loss, "linear", 3, merged[:, None]).item() == \
        pytest.approx(listwise_loss(scores, merged, loss, "linear", 3).item(), rel=1e-6)


@pytest.mark.parametrize("cls", [ListwiseScorer, LabelQueryDecoder])
def test_a_model_with_annotators_each_learns_from_the_batch_lists(cls):
    torch.manual_seed(3)
    each, merged = cls(9, annotators="each", dropout=0.0).eval(), cls(9, dropout=0.0).eval()
    merged.load_state_dict(each.state_dict())
    features = torch.randn(1, 1280) if cls is ListwiseScorer else torch.randn(1, 1280, 4, 4)
    lists = torch.tensor([[[2, 5, -1], [7, 2, 1]]])
    with torch.no_grad():
        got = each.loss({"features": features, "target": torch.tensor([[2, 7, 5]]), "lists": lists})
        want = [merged.loss({"features": features, "target": lists[:, a]}) for a in range(2)]
    assert got.item() == pytest.approx((want[0] + want[1]).item() / 2, rel=1e-6)


def test_the_data_module_lists_each_annotator_and_falls_back_to_the_merged_list():
    vocab = Vocabulary(["dog", "ball", "grass", "man"])
    records = [Record("a.jpg", ["dog", "ball", "grass"], "val", lists=[["dog", "ball"], ["ball", "sky", "grass"]]),
               Record("b.jpg", ["man", "dog"], "test")]
    lists = annotator_lists(records, vocab, "human", 0)
    assert lists.tolist() == [[[0, 1], [1, 2]], [[3, 0], [-1, -1]]]  # "sky" is not in the vocabulary


def test_an_unknown_loss_or_annotators_value_is_one_clear_error(tmp_path, cache_dir):
    for key, value in (("model.annotators", "all"), ("model.loss", "lambdarank")):
        cfg = compose_cfg(["model=scorer", f"{key}={value}"], tmp_path, cache_dir)
        with pytest.raises(TagrankError, match=rf"{key}.*{value}"):
            build_model(cfg, num_tags=5)


def test_a_run_learns_from_the_data_modules_lists_where_the_data_has_one_list_an_image(tmp_path, cache_dir):
    # The synthetic data has one list per image: the data module's lists are the merged lists, and a
    # run with annotators=each trains, validates and tests through the real Trainer path.
    cfg = compose_cfg(TINY + ["model=scorer", "model.annotators=each", "model.loss=neuralndcg", "trainer.max_steps=3"],
                      tmp_path, cache_dir)
    dm = build_data(cfg)
    assert dm.lists.shape[1] == 1 and torch.equal(dm.lists[:, 0], dm.targets)
    train(cfg)
    metrics = json.loads((tmp_path / "metrics.json").read_text())["metrics"]
    assert 0 < metrics["ndcg_mean"] <= 1 and math.isfinite(metrics["loss"])
