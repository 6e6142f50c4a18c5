"""The listwise scorer, the Plackett-Luce loss, beam search and the set metrics of a stop rule."""

from __future__ import annotations

import json
import math

import pytest
import torch

from tagrank.metrics import SetMetrics
from tagrank.models.base import beam_distinct, greedy_distinct, plackett_luce_nll
from tagrank.models.lstm import LSTMTagger
from tagrank.models.naive_rnn import NaiveRNN
from tagrank.models.listwise import listnet_rows
from tagrank.models.scorer import ListwiseScorer, best_threshold
from tagrank.cli.train import train

from .conftest import TINY, compose_cfg


def test_plackett_luce_of_a_two_tag_list_computed_by_hand():
    # Scores 1, 2, 0 for tags 0, 1, 2 at both steps; the list is (0, 2) then padding.
    # P(0 first) = e / (e + e^2 + 1) = 0.244728; P(2 | 0 drawn) = 1 / (e^2 + 1) = 0.119203.
    logits = torch.tensor([[1.0, 2.0, 0.0]]).expand(3, -1)[None]
    nll = plackett_luce_nll(logits, torch.tensor([[0, 2, -1]]))
    assert nll.item() == pytest.approx(-math.log(0.244728) - math.log(0.119203), abs=1e-5)
    # The paper's per-step softmax over all tags would give -log(0.244728) - log(1 / 11.107): larger.
    assert nll.item() < -math.log(0.244728) - math.log(1 / 11.10734)


def test_plackett_luce_ignores_empty_lists_and_sums_the_batch():
    logits = torch.randn(2, 4, 6)
    one = plackett_luce_nll(logits[:1], torch.tensor([[3, 1, 5, -1]]))
    both = plackett_luce_nll(logits, torch.tensor([[3, 1, 5, -1], [-1, -1, -1, -1]]))
    assert both.item() == pytest.approx(one.item())


def test_listnet_puts_the_target_on_the_ndcg_gains():
    # One list (2, 0) with linear relevance 2, 1: gains 3 and 1, so targets 0.75 on tag 2 and 0.25 on tag 0.
    scores = torch.tensor([[0.3, -1.0, 2.0, 0.5]])
    logp = scores.log_softmax(-1)[0]
    expected = -(0.75 * logp[2] + 0.25 * logp[0])
    assert listnet_rows(scores, torch.tensor([[2, 0, -1]]), "linear").sum().item() == pytest.approx(expected.item(), abs=1e-6)


def test_beam_of_width_one_is_greedy_and_a_wider_beam_finds_a_likelier_list():
    # Step 0: A .5, B .4, C .1; step 1: A .9, B .05, C .05. Greedy takes A, then B or C (0.5 x 0.5 =
    # 0.25); the likelier distinct list is (B, A): 0.4 x 0.9 / 0.95 = 0.379.
    logits = torch.tensor([[[0.5, 0.4, 0.1], [0.9, 0.05, 0.05]]]).log()

    def step(t, state, previous):
        return state[0][:, t], state

    assert beam_distinct(step, (logits,), 2, 1).tolist() == greedy_distinct(logits).tolist()
    assert beam_distinct(step, (logits,), 2, 2).tolist() == [[1, 0]]


def test_beam_width_one_equals_greedy_for_both_recurrent_methods():
    torch.manual_seed(0)
    features = torch.randn(5, 1280)
    lstm = LSTMTagger(40, top_k=6).eval()
    wide = LSTMTagger(40, top_k=6, beam_width=1).eval()
    wide.load_state_dict(lstm.state_dict())
    with torch.no_grad():
        greedy = greedy_distinct(lstm(features, 6))
        step = lambda t, state, previous: (state[0][:, t], state)  # noqa: E731
        assert torch.equal(beam_distinct(step, (lstm(features, 6),), 6, 1), greedy)
        assert torch.equal(wide.rank({"features": features}), greedy)
        naive = NaiveRNN(40, top_k=6).eval()
        assert torch.equal(naive.beam(features), naive.rank({"features": features}))
    naive5 = NaiveRNN(40, top_k=6, beam_width=5).eval()
    naive5.load_state_dict(naive.state_dict())
    with torch.no_grad():
        wider = naive5.rank({"features": features})
    assert all(len(set(row)) == 6 for row in wider.tolist())


def test_set_metrics_by_hand():
    metric = SetMetrics()
    # Image 1 names (3, 5, 3): 2 distinct, 1 hit of truth (3, 4): P 1/2, R 1/2, F1 1/2.
    # Image 2 names (7): no hit: P 0, R 0, F1 0. Image 3 has an empty truth: left out.
    metric.update(torch.tensor([[3, 5, 3], [7, -1, -1], [1, 2, -1]]), torch.tensor([[3, 4], [1, -1], [-1, -1]]))
    out = {k: float(v) for k, v in metric.compute().items()}
    assert out == pytest.approx({"set_precision": 0.25, "set_recall": 0.25, "set_f1": 0.25, "set_size": 1.5})


def test_the_stop_threshold_maximises_f1_on_the_given_lists():
    # Two images whose first two tags are right and the rest wrong: the best threshold keeps two.
    probs = torch.tensor([[0.5, 0.3, 0.1, 0.05], [0.6, 0.2, 0.15, 0.01]])
    hits = torch.tensor([[True, True, False, False], [True, True, False, False]])
    tau = best_threshold(probs, hits, torch.tensor([2.0, 2.0]))
    assert tau == pytest.approx(0.2)


@pytest.mark.parametrize("length", ["trainer.max_epochs=1", "trainer.max_steps=2"])  # the second: no validation
def test_a_scorer_run_chooses_its_stop_rule_on_val_and_reports_set_metrics(length, tmp_path, cache_dir):
    cfg = compose_cfg(TINY + ["model=scorer", length], tmp_path, cache_dir)       # while fitting, one on its end
    train(cfg)
    metrics = json.loads((tmp_path / "metrics.json").read_text())["metrics"]
    assert 0 <= metrics["set_f1"] <= 1 and 1 <= metrics["set_size"] <= 10
    model = ListwiseScorer.load_from_checkpoint(tmp_path / "checkpoints/best.ckpt", map_location="cpu",
                                                weights_only=True)
    assert 0 < float(model.stop_threshold) <= 1  # chosen on val, saved with the weights


@pytest.mark.parametrize("loss", ["plackett_luce", "listnet", "both", "lambdaloss", "neuralndcg"])
def test_the_scorer_learns_a_fixed_order(loss):
    # Every image has the list (4, 1, 7): a scorer trained on it ranks those three first, in that order.
    torch.manual_seed(0)
    model = ListwiseScorer(10, loss=loss, dropout=0.0, top_k=3)
    features = torch.randn(32, 1280)
    batch = {"features": features, "target": torch.tensor([[4, 1, 7]]).expand(32, -1)}
    opt = torch.optim.Adam(model.head.parameters(), lr=3e-2)
    for _ in range(300):
        opt.zero_grad()
        model.loss(batch).backward()
        opt.step()
    with torch.no_grad():
        assert model.eval().rank({"features": features}).tolist() == [[4, 1, 7]] * 32


def test_the_lstm_trains_with_the_plackett_luce_loss():
    torch.manual_seed(0)
    model = LSTMTagger(12, loss="plackett_luce", dropout=0.0)
    batch = {"features": torch.randn(8, 1280), "target": torch.tensor([[3, 9, 1, -1]]).expand(8, -1)}
    first = model.loss(batch)
    first.backward()
    assert torch.isfinite(first) and model.out.weight.grad.abs().sum() > 0
