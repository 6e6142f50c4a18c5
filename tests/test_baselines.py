"""The paper's baselines (and every other registered model) through the real Trainer, and checks that each
baseline is the method it claims to be: the SVM solved to its optimum (against liblinear; C chosen on val;
the same for every seed), SVM-rank's pairwise loss, the Naive-RNN's two decodings (masked; captioning with
END, repeats and early stops)."""

from __future__ import annotations

import json
from pathlib import Path

import hydra
import numpy as np
import pytest
import torch
from sklearn.svm import LinearSVC

from tagrank import config_options
from tagrank.checkpoint import model_class
from tagrank.errors import TagrankError
from tagrank.metrics import RankingMetrics, SetMetrics, ndcg_at_k, precision_at_k
from tagrank.models.naive_rnn import NaiveRNN
from tagrank.models.svm import LinearSVM, Primal, hinge, presence
from tagrank.models.svm_rank import RankSVM, grades, pairwise_hinge
from tagrank.pipeline import attach_inputs, build_data, build_model
from tagrank.cli.train import train

from .conftest import TINY, compose_cfg

def load_checkpoint(path: Path):
    """What tagrank-eval does: the class the checkpoint names, rebuilt from the checkpoint alone."""
    return hydra.utils.get_class(model_class(path)).load_from_checkpoint(path, map_location="cpu",
                                                                         weights_only=True)


MODELS = config_options("model")
# Two small values of C for the SVMs' runs here: their default grids (to C = 10) also work, but on 96
# images a large C takes hundreds of iterations and tests nothing more (C=auto itself: tests below).
SHORT_GRID = {"svm": ["model.C_grid=[0.1,1.0]"], "svm_rank": ["model.C_grid=[0.01,0.1]"]}


def test_the_paper_methods_are_registered():
    assert {"lstm", "svm", "svm_rank", "naive_rnn", "frequency"} <= set(MODELS)


@pytest.mark.parametrize("model", MODELS)
def test_every_model_fast_dev_runs(model, tmp_path, cache_dir):
    cfg = compose_cfg(TINY + [f"model={model}", "debug=fdr"] + SHORT_GRID.get(model, []), tmp_path, cache_dir)
    value = train(cfg)
    assert value is not None and 0.0 <= value <= 1.0  # val/ndcg_mean after one batch of each stage


@pytest.mark.parametrize("model", MODELS)
def test_every_model_trains_tests_and_reloads(model, tmp_path, cache_dir):
    cfg = compose_cfg(TINY + [f"model={model}", "trainer.max_epochs=1"] + SHORT_GRID.get(model, []), tmp_path, cache_dir)
    train(cfg)
    result = json.loads((tmp_path / "metrics.json").read_text())
    assert result["metrics"]["n_images"] == 48
    lines = [json.loads(line) for line in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    preds = [line["predicted"] for line in lines]
    if cfg.model.get("decoding") == "captioning":  # until END: maybe shorter, maybe a tag twice
        assert len(preds) == 48 and all(len(p) <= 10 for p in preds)
    else:
        assert len(preds) == 48 and all(len(p) == 10 and len(set(p)) == 10 for p in preds)
    # The written lists score what metrics.json says, by the plain-list metrics (what experiments/table1.py
    # recomputes from them): also lists that stopped early or repeat a tag.
    scored = [(line["predicted"], line["truth"]) for line in lines if line["truth"]]
    ks = range(1, 11)
    ndcg = np.mean([np.mean([ndcg_at_k(p, t, k) for k in ks]) for p, t in scored])
    precision = np.mean([np.mean([precision_at_k(p, t, k) for k in ks]) for p, t in scored])
    assert ndcg == pytest.approx(result["metrics"]["ndcg_mean"], abs=1e-6)
    assert precision == pytest.approx(result["metrics"]["p_mean"], abs=1e-6)
    # Plain hyperparameters only: the checkpoint rebuilds the model without Hydra, with weights_only loading.
    cls = hydra.utils.get_class(cfg.model._target_)
    reloaded = cls.load_from_checkpoint(tmp_path / "checkpoints/best.ckpt", map_location="cpu", weights_only=True)
    assert type(reloaded) is cls
    # ... and ranks the test images as the run reported.
    dm = build_data(cfg)
    attach_inputs(cfg, dm, reloaded, need_images=False)
    rows = dm.rows("test")
    with torch.no_grad():
        ranked = reloaded.eval().rank({"features": dm.features[rows], "target": dm.targets[rows]})
    assert [dm.vocab.decode(r) for r in ranked.tolist()] == preds
    if model == "frequency":  # counting the training tags reproduces the prior every run reports
        assert result["metrics"]["ndcg_mean"] == pytest.approx(result["frequency_prior"]["ndcg_mean"], abs=1e-6)
        assert result["metrics"]["p_mean"] == pytest.approx(result["frequency_prior"]["p_mean"], abs=1e-6)
        seen = dm.targets[dm.rows("train")]
        assert torch.equal(reloaded.counts, torch.bincount(seen[seen >= 0], minlength=dm.num_tags))


# -- SVM: the real SVM solution -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_features(tmp_path_factory, cache_dir):
    """The tiny synthetic set with its cached real backbone features (and the svm config for it)."""
    cfg = compose_cfg(TINY + ["model=svm"], tmp_path_factory.mktemp("svm"), cache_dir)
    dm = build_data(cfg)
    attach_inputs(cfg, dm, build_model(cfg, dm.num_tags), need_images=False)
    return dm


def relative_gradient(model: LinearSVM, dm, C: float) -> float:
    """Largest entry of the gradient of J at the model's weights, relative to the largest at W = 0 (the
    uncentred problem: centring while solving must not move the optimum)."""
    train = dm.rows("train")
    problem = Primal(model.scale(dm.features[train].double()), dm.targets[train], model.data_term, model.num_tags,
                     model.curvature(dm.targets[train]))
    _, grad_w, grad_b = problem.evaluate(model.linear.weight.detach().double(), model.linear.bias.detach().double(), C)
    return problem.relative_gradient(grad_w, grad_b)


def test_svm_reaches_the_optimum_and_agrees_with_liblinear(tiny_features):
    dm = tiny_features
    train, test = dm.rows("train"), dm.rows("test")
    model = LinearSVM(num_tags=dm.num_tags, C=1.0)
    (solve,) = model.fit_features(dm.features, dm.targets, train, dm.rows("val"))
    # Stationary (the optimum of a convex problem): gradient entries 1e-5 of those at W = 0 or less, also
    # in float32 weights on the uncentred features. (tol=1e-6 applies in the solver's whitened coordinates.)
    assert solve.gradient < 1e-5 and relative_gradient(model, dm, 1.0) < 1e-5

    # liblinear per tag, same C, loss and features. It regularises the bias as the weight of a constant
    # feature intercept_scaling; at 1000 that penalty is negligible and its primal solver (TRON) still
    # converges, so both solve the same problem.
    X = model.scale(dm.features.double()).numpy()
    Y = presence(dm.targets, dm.num_tags).numpy()
    with torch.no_grad():
        ours = model(dm.features).double().numpy()
    fitted, gaps = [], []
    for v in range(dm.num_tags):
        y = Y[train, v]
        if y.all() or not y.any():
            continue  # a tag seen in every training image or in none has no SVM
        svc = LinearSVC(C=1.0, loss="squared_hinge", dual=False, tol=1e-10, intercept_scaling=1000,
                        max_iter=100000).fit(X[train], y)
        theirs = svc.decision_function(X)
        gaps.append(np.abs(theirs - ours[:, v]).max() / np.abs(theirs).max())
        fitted.append(v)
    assert len(fitted) >= 20
    assert max(gaps) < 2e-4, max(gaps)  # decision values on all images within 0.02% of their range


def test_svm_chooses_C_on_the_validation_split(tiny_features):
    dm = tiny_features
    train, val = dm.rows("train"), dm.rows("val")
    grid = [0.01, 0.1, 1.0]
    auto = LinearSVM(num_tags=dm.num_tags, C="auto", C_grid=grid)
    solves = auto.fit_features(dm.features, dm.targets, train, val)
    assert [s.C for s in solves] == grid
    # Each C solved on its own (cold start) and scored on val: the same scores, and the best is kept.
    scores = []
    for C in grid:
        fixed = LinearSVM(num_tags=dm.num_tags, C=C)
        fixed.fit_features(dm.features, dm.targets, train, val)
        with torch.no_grad():
            scores.append(fixed.val_score(fixed(dm.features[val]), dm.targets[val]))
        if C == float(auto.fitted_C):
            assert torch.allclose(auto.linear.weight, fixed.linear.weight, atol=1e-4, rtol=1e-3)
    assert [s.val_ndcg for s in solves] == pytest.approx(scores, abs=1e-6)
    assert len(set(np.round(scores, 6))) > 1  # the grid matters here, so the choice is a real test
    assert float(auto.fitted_C) == grid[int(np.argmax(scores))]
    # Upwards through a wide grid, the search stops at the first C that scores below the best so far
    # (C_patience=1), before the slow large values.
    wide = [0.1, 1.0, 10.0, 100.0, 1000.0]
    patient = LinearSVM(num_tags=dm.num_tags, C="auto", C_grid=wide, C_patience=1)
    tried = [s.val_ndcg for s in patient.fit_features(dm.features, dm.targets, train, val)]
    assert 2 <= len(tried) < len(wide) and tried[-1] < max(tried[:-1])
    assert all(tried[i] >= max(tried[:i]) for i in range(1, len(tried) - 1))
    assert float(patient.fitted_C) == wide[int(np.argmax(tried))]


def test_svm_refuses_what_it_cannot_solve(tiny_features):
    dm = tiny_features
    with pytest.raises(TagrankError, match="model.loss=hinge"):
        LinearSVM(num_tags=dm.num_tags, C=1.0, loss="hinge").fit_features(dm.features, dm.targets, [0, 1], [2])
    with pytest.raises(TagrankError, match="model.C='best'"):
        LinearSVM(num_tags=3, C="best")
    with pytest.raises(TagrankError, match="model.C_grid"):
        LinearSVM(num_tags=3, C="auto", C_grid=[])


@pytest.mark.parametrize("model", ["svm", "svm_rank"])
def test_svm_runs_do_not_depend_on_the_seed(model, tmp_path, cache_dir):
    """A convex problem solved to its optimum: two seeds give the same weights and test metrics."""
    results = []
    for seed in (0, 1):
        out = tmp_path / str(seed)
        train(compose_cfg(TINY + [f"model={model}", f"seed={seed}"] + SHORT_GRID[model], out, cache_dir))
        state = torch.load(out / "checkpoints/best.ckpt", weights_only=True)["state_dict"]
        results.append((json.loads((out / "metrics.json").read_text())["metrics"], state))
    (m0, s0), (m1, s1) = results
    assert m0 == m1
    assert torch.equal(s0["linear.weight"], s1["linear.weight"]) and torch.equal(s0["fitted_C"], s1["fitted_C"])


def test_an_old_svm_checkpoint_still_loads_and_ranks(tmp_path):
    """Checkpoints of the minibatch-Adam SVM (lr, loss=hinge, a fixed C, no fitted_C) still evaluate."""
    old = LinearSVM(num_tags=5, C=10.0, loss="hinge")
    hparams = {**{k: v for k, v in old.hparams.items() if k not in ("C_grid", "C_patience", "tol", "max_iter")},
               "lr": 0.05}
    state = {k: v for k, v in old.state_dict().items() if k != "fitted_C"}
    torch.save({"state_dict": state, "hyper_parameters": hparams, "pytorch-lightning_version": "2.6.0",
                "tagrank_class": "tagrank.models.svm.LinearSVM"}, tmp_path / "old.ckpt")
    loaded = load_checkpoint(tmp_path / "old.ckpt")  # what tagrank-eval does
    assert loaded.hparams.loss == "hinge" and float(loaded.fitted_C) == 10.0
    features = torch.randn(3, loaded.feature_dim)
    assert loaded.eval().rank({"features": features, "target": torch.full((3, 1), -1)}).shape == (3, 5)


# -- SVM-rank: Joachims' pairwise constraints ------------------------------------------------------
def _scores_model(scores: list[float], loss: str = "hinge") -> RankSVM:
    """A ranking SVM whose scores are the given ones for every image (bias only)."""
    model = RankSVM(num_tags=len(scores), C=1.0, loss=loss)
    with torch.no_grad():
        model.linear.weight.zero_()
        model.linear.bias.copy_(torch.tensor(scores))
    return model.eval()


def test_svm_rank_loss_is_zero_when_ranked_correctly_and_positive_when_a_pair_is_swapped():
    model = _scores_model([4.0, 3.0, 0.0, -1.0, 2.0])  # ranks tags 0 > 1 > 4 > 2 > 3, gaps >= 1
    features = torch.rand(2, model.feature_dim)
    batch = {"features": features, "target": torch.tensor([[0, 1, 4], [0, 1, 4]])}
    assert model.loss(batch).item() == 0.0
    assert model.rank(batch)[0, :3].tolist() == [0, 1, 4]
    # Two ground-truth tags in the wrong order: the pair (1 over 0) costs hinge(3 - 4) = 2.
    swapped = {"features": features, "target": torch.tensor([[1, 0, 4], [0, 1, 4]])}
    assert pairwise_hinge(model(features), swapped["target"], "hinge").tolist() == [2.0, 0.0]
    assert model.loss(swapped).item() == pytest.approx(1.0)  # mean over the two images
    assert pairwise_hinge(model(features), swapped["target"]).tolist() == [4.0, 0.0]  # squared: 2^2
    # A ground-truth tag below an absent one (2 in the truth, scored under absent tag 4): positive too.
    absent = torch.tensor([[0, 1, 2], [0, 1, 2]])
    assert (pairwise_hinge(model(features), absent) > 0).all()
    # Within the margin is not enough: scores 4 and 3.5 violate the margin of the pair (0 over 1).
    close = _scores_model([4.0, 3.5, 0.0, -1.0, 2.0])(features)
    assert pairwise_hinge(close, batch["target"], "hinge")[0].item() == pytest.approx(0.5)


@pytest.mark.parametrize("kind", ["hinge", "squared_hinge"])
def test_svm_rank_pair_terms_equal_the_brute_force_sum(kind):
    """The [images, list places, tags] form sums exactly the pairs of the [images, tags, tags] definition."""
    torch.manual_seed(0)
    num_tags, batch = 9, 50
    target = torch.full((batch, 6), -1)
    for i in range(batch):
        n = int(torch.randint(0, 7, ()))
        target[i, :n] = torch.randperm(num_tags)[:n]
    scores = torch.randn(batch, num_tags, dtype=torch.float64)
    g = grades(target, num_tags)
    brute = torch.zeros(batch, dtype=torch.float64)
    for i in range(batch):
        for a in range(num_tags):
            for b in range(num_tags):
                if g[i, a] > g[i, b]:
                    brute[i] += hinge(scores[i, a] - scores[i, b], kind)
    assert torch.allclose(pairwise_hinge(scores, target, kind), brute, rtol=1e-12, atol=1e-12)


def test_svm_rank_learns_a_separable_ranking():
    num_tags, per_kind = 6, 12
    orders = [[0, 3, 5], [2, 1], [4, 0, 1, 2], [5, 4]]  # one ground-truth list per kind of image
    generator = torch.Generator().manual_seed(0)
    features = torch.zeros(len(orders) * per_kind, 1280)
    target = torch.full((len(features), 4), -1)
    for kind, order in enumerate(orders):
        rows = slice(kind * per_kind, (kind + 1) * per_kind)
        features[rows, kind] = 1.0
        features[rows, 10:20] = 0.05 * torch.rand(per_kind, 10, generator=generator)
        target[rows, : len(order)] = torch.tensor(order)
    model = RankSVM(num_tags=num_tags, C=1.0)
    everything = list(range(len(features)))
    (solve,) = model.fit_features(features, target, everything, everything)
    assert solve.gradient < 1e-5
    model.eval()
    batch = {"features": features, "target": target}
    assert model.loss(batch).item() < 0.05  # (almost) every constraint met with margin
    ranked = model.rank(batch)
    for kind, order in enumerate(orders):
        assert ranked[kind * per_kind, : len(order)].tolist() == order


# -- Naive-RNN: captioning-style, image at the first step only ---------------------------------------
@pytest.fixture(scope="module")
def naive():
    torch.manual_seed(0)
    return NaiveRNN(num_tags=7, top_k=10, hidden_size=32, proj_dim=16).eval()


def test_naive_rnn_teacher_forcing_shapes_and_causality(naive):
    features = torch.randn(3, naive.feature_dim)
    target = torch.tensor([[3, 1, 4, 0], [2, 5, -1, -1], [6, -1, -1, -1]])
    logits = naive(features, target[:, :-1])
    assert logits.shape == (3, 4, 7)
    assert torch.isfinite(naive.loss({"features": features, "target": target}))
    # Step t sees only tags before t: changing the tag fed at step 2 leaves steps 0-1 alone, changes step 2.
    other = target.clone()
    other[0, 1] = 6
    changed = naive(features, other[:, :-1])
    assert torch.equal(changed[0, :2], logits[0, :2]) and not torch.allclose(changed[0, 2], logits[0, 2])
    # Step 0 sees the image (with START) and nothing else.
    assert torch.equal(naive(features, torch.zeros_like(target[:, :-1]))[:, 0], logits[:, 0])
    assert not torch.allclose(naive(features + 1, target[:, :-1])[:, 0], logits[:, 0])
    # The image enters only at the first step: the LSTM's later inputs are the previous tags' embeddings.
    seen = []
    hook = naive.lstm.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    naive(features, target[:, :-1])
    hook.remove()
    assert torch.equal(seen[0][:, 1:], naive.embed(target[:, :-1].clamp(min=0)))
    assert torch.allclose(seen[0][:, 0], naive.proj(features) + naive.embed.weight[naive.start])


def test_naive_rnn_decodes_greedily_without_repeats(naive):
    features = torch.randn(5, naive.feature_dim)
    ranked = naive.rank({"features": features, "target": torch.full((5, 1), -1)})
    assert ranked.shape == (5, 7)  # top_k 10 is capped at the 7 tags
    assert all(len(set(row)) == 7 for row in ranked.tolist())
    # Decoding feeds back its own picks: teacher forcing on the decoded list reproduces each greedy choice.
    logits = naive(features, ranked[:, :-1])
    for t in range(ranked.shape[1]):
        masked = logits[:, t].clone()
        for s in range(t):
            masked[torch.arange(5), ranked[:, s]] = float("-inf")
        assert torch.equal(masked.argmax(-1), ranked[:, t])


# -- Naive-RNN, captioning decoding: END after the list, no masking ------------------------------------
def test_captioning_trains_an_end_token_after_each_list():
    torch.manual_seed(0)
    model = NaiveRNN(num_tags=7, hidden_size=32, proj_dim=16, decoding="captioning").eval()
    assert model.out.out_features == 8  # the 7 tags and END (class 7)
    target = torch.tensor([[3, 1, 4, 0], [2, 5, -1, -1], [-1, -1, -1, -1]])
    assert model.with_end(target).tolist() == [[3, 1, 4, 0, 7], [2, 5, 7, -1, -1], [7, -1, -1, -1, -1]]
    # The loss: -log p of each tag of the list, then of END, fed the ground truth before it; per image.
    features = torch.randn(3, model.feature_dim)
    log_p = model(features, torch.tensor([[3, 1, 4, 0], [2, 5, -1, -1], [-1, -1, -1, -1]])).log_softmax(-1)
    want = -(log_p[0, [0, 1, 2, 3, 4], [3, 1, 4, 0, 7]].sum() + log_p[1, [0, 1, 2], [2, 5, 7]].sum()
             + log_p[2, 0, 7]) / 3
    assert model.loss({"features": features, "target": target}).item() == pytest.approx(want.item(), rel=1e-6)


def test_captioning_stops_at_end_and_pads_with_minus_one():
    torch.manual_seed(0)
    model = NaiveRNN(num_tags=7, top_k=10, hidden_size=32, proj_dim=16, dropout=0.0, decoding="captioning")
    features = torch.randn(3, model.feature_dim)
    target = torch.tensor([[3, 1, -1, -1], [0, 4, 2, 6], [5, -1, -1, -1]])
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(80):  # learn the three lists, each with its END
        loss = model.loss({"features": features, "target": target})
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    ranked = model.eval().rank({"features": features, "target": target})
    assert ranked.tolist() == [[3, 1] + [-1] * 8, [0, 4, 2, 6] + [-1] * 6, [5] + [-1] * 9]
    # Scored as lists of 2, 4 and 1 tags: the padded places are misses.
    metric = RankingMetrics(10)
    metric.update(ranked, target)
    assert float(metric.compute()["p@10"]) == pytest.approx((2 + 4 + 1) / 30)
    # As a set (its own stop rule, END), each list is exactly right.
    sets = SetMetrics()
    sets.update(model.predicted_set({"target": target}, ranked), target)
    assert {k: float(v) for k, v in sets.compute().items()} == pytest.approx(
        {"set_precision": 1.0, "set_recall": 1.0, "set_f1": 1.0, "set_size": 7 / 3})


def test_captioning_decodes_greedily_without_masking():
    torch.manual_seed(0)
    model = NaiveRNN(num_tags=7, top_k=10, hidden_size=32, proj_dim=16, decoding="captioning").eval()
    features = torch.randn(8, model.feature_dim)
    batch = {"features": features, "target": torch.full((8, 1), -1)}
    ranked = model.rank(batch)
    assert ranked.shape == (8, 10)  # top_k places, more than the 7 tags: nothing stops a repeat
    # Each step is the unmasked argmax given the list decoded so far (teacher forcing on it) ...
    lengths = (ranked >= 0).sum(-1)
    picks = model(features, ranked[:, :-1].clamp(min=0)).argmax(-1)
    for row, n in enumerate(lengths.tolist()):
        assert (ranked[row, n:] == -1).all() and torch.equal(picks[row, :n], ranked[row, :n])
        if n < 10:
            assert picks[row, n] == model.end
    assert any(len(set(r[r >= 0].tolist())) < int((r >= 0).sum()) for r in ranked)  # ... so tags repeat
    # A model that always prefers tag 2 says it ten times; the metrics count it once.
    with torch.no_grad():
        model.out.weight.zero_()
        model.out.bias.copy_(torch.tensor([0, 0, 5.0, 0, 0, 0, 0, 0]))
    again = model.rank(batch)
    assert again.tolist() == [[2] * 10] * 8
    metric = RankingMetrics(10)
    metric.update(again[:1], torch.tensor([[2, 4]]))
    out = metric.compute()
    assert float(out["p@10"]) == pytest.approx(0.1)
    assert float(out["ndcg@10"]) == pytest.approx(ndcg_at_k([2], [2, 4], 10))


def test_an_old_naive_rnn_checkpoint_loads_as_masked(tmp_path):
    """Checkpoints from before ``decoding`` existed have no such hyperparameter and no END row."""
    old = NaiveRNN(num_tags=7, hidden_size=32, proj_dim=16)
    hparams = {k: v for k, v in old.hparams.items() if k != "decoding"}
    torch.save({"state_dict": old.state_dict(), "hyper_parameters": hparams, "pytorch-lightning_version": "2.6.0",
                "tagrank_class": "tagrank.models.naive_rnn.NaiveRNN"}, tmp_path / "old.ckpt")
    loaded = load_checkpoint(tmp_path / "old.ckpt")  # what tagrank-eval does
    assert loaded.hparams.decoding == "masked" and loaded.out.out_features == 7
    assert torch.equal(loaded.out.weight, old.out.weight)
