"""Check the SVM baseline against scikit-learn's LinearSVC (liblinear) on a dataset's cached features.

    python experiments/check_svm.py run=logs/train/runs/<time>      # that run's best.ckpt, its data and backbone
    python experiments/check_svm.py data=flickr8k data.root=../shared/data/flickr8k model.C=0.1   # fit ours now
    (without run=: tagrank-train settings; model.C=auto solves the grid and compares at the chosen C)

Its settings (``run``, ``tol``, ``intercept_scaling``) are ``tagrank/conf/check_svm.yaml``: ``train.yaml`` with
``model=svm``, composed by Hydra as tagrank's commands are.

Why: ``model=svm`` solves all one-vs-rest problems at once with L-BFGS (tagrank/models/svm.py); this fits
liblinear's L2-loss SVM per tag with the same C, loss and features, and prints how far the two are apart:
per tag, the largest gap between the decision values on the test images relative to their range, and
the rank correlation; the objective J of both; the test NDCG / P (mean over k) of each; and the time each
took. liblinear regularises the bias as the weight of a constant feature ``intercept_scaling`` (default
here 1000, where that penalty is negligible and the two problems coincide).
"""

from __future__ import annotations

import time
from pathlib import Path

import hydra
import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from scipy.stats import spearmanr
from sklearn.svm import LinearSVC

from tagrank.checkpoint import model_class
from tagrank.cli import command
from tagrank.config import PositiveFloat, check_value
from tagrank.errors import TagrankError
from tagrank.metrics import RankingMetrics
from tagrank.models.svm import LinearSVM, presence
from tagrank.pipeline import attach_inputs, build_data, build_model


OWN = ("run", "tol", "intercept_scaling")  # this script's settings; every other one is tagrank-train's


def load_setup(cfg: DictConfig) -> tuple[DictConfig, LinearSVM | None]:
    """The run's config and fitted model (``run=``), or the composed ``model=svm`` config and no model yet."""
    if not cfg.run:
        return cfg, None
    run = Path(cfg.run)
    others = [o for o in HydraConfig.get().overrides.task if o.split("=")[0].lstrip("+~") not in OWN]
    if others:
        raise TagrankError(f"run={run} takes the run's own settings: no {' '.join(others)}")
    if not (run / ".hydra/config.yaml").is_file() or not (run / "checkpoints/best.ckpt").is_file():
        raise TagrankError(f"run={run}: expected a tagrank-train run directory (.hydra/config.yaml, "
                           "checkpoints/best.ckpt)")
    ckpt = run / "checkpoints/best.ckpt"
    model = hydra.utils.get_class(model_class(ckpt)).load_from_checkpoint(ckpt, weights_only=True)
    if type(model) is not LinearSVM:
        raise TagrankError(f"run={run}: its checkpoint is a {type(model).__name__}, not model=svm")
    return OmegaConf.load(run / ".hydra/config.yaml"), model


def ranking_scores(scores: np.ndarray, target: torch.Tensor, top_k: int, relevance: str) -> tuple[float, float]:
    metric = RankingMetrics(top_k, relevance, sync_on_compute=False)
    metric.update(torch.from_numpy(scores).topk(min(top_k, scores.shape[1]), dim=-1).indices, target)
    out = metric.compute()
    return float(out["ndcg_mean"]), float(out["p_mean"])


def objective(w: np.ndarray, b: float, x: np.ndarray, y: np.ndarray, C: float) -> float:
    """One tag's term of J (our scaling: LinearSVC's objective / (C n)), the bias unregularised."""
    margin = (2.0 * y - 1) * (x @ w + b)
    return float(w @ w / (2 * C * len(x)) + np.mean(np.maximum(0.0, 1.0 - margin) ** 2))


def check(settings: DictConfig) -> None:
    check_value("tol", settings.tol, PositiveFloat)
    check_value("intercept_scaling", settings.intercept_scaling, PositiveFloat)
    cfg, model = load_setup(settings)
    dm = build_data(cfg)
    if model is None:
        model = build_model(cfg, dm.num_tags)
    attach_inputs(cfg, dm, model, need_images=False)
    train, val, test = dm.rows("train"), dm.rows("val"), dm.rows("test")
    if settings.run:  # solved again at the run's C: the time it takes, and the same weights
        saved = model
        model = LinearSVM(**{**saved.hparams, "C": float(saved.fitted_C)})
    started = time.perf_counter()
    for s in model.fit_features(dm.features, dm.targets, train, val):
        print(f"ours: C={s.C:g}: {s.iterations} L-BFGS iterations, objective {s.objective:.6g}, relative gradient "
              f"{s.gradient:.1e}, {s.seconds:.1f} s" + ("" if np.isnan(s.val_ndcg) else f", val NDCG {s.val_ndcg:.4f}"))
    print(f"ours: {time.perf_counter() - started:.1f} s in all, C={float(model.fitted_C):g}")
    if settings.run:
        gap = (model.linear.weight - saved.linear.weight).abs().max().item()
        print(f"ours: largest weight difference to {settings.run}/checkpoints/best.ckpt: {gap:.2e}")
    compare(model, dm.features, dm.targets, train, test, dm.vocab.tags, settings.tol, settings.intercept_scaling)


def compare(model: LinearSVM, features: torch.Tensor, targets: torch.Tensor, train: list[int], test: list[int],
            tags: list[str], tol: float = 1e-10, intercept_scaling: float = 1000.0) -> None:
    """Fit liblinear per tag at the model's C on the same scaled features, and print the comparison."""
    C = float(model.fitted_C)
    x = model.scale(features.double()).numpy()
    y = presence(targets, model.num_tags).numpy()
    weight, bias = model.linear.weight.detach().double().numpy(), model.linear.bias.detach().double().numpy()
    ours = x @ weight.T + bias
    theirs = np.full_like(ours, -np.inf)  # a tag without both classes in training gets no SVM from liblinear
    fitted, gaps, rhos, j_ours, j_theirs = [], [], [], 0.0, 0.0
    started = time.perf_counter()
    for v in range(model.num_tags):
        yv = y[train, v]
        if yv.all() or not yv.any():
            continue
        svc = LinearSVC(C=C, loss="squared_hinge", dual=False, tol=tol, max_iter=100000,
                        intercept_scaling=intercept_scaling).fit(x[train], yv)
        theirs[:, v] = svc.decision_function(x)
        fitted.append(v)
        gaps.append(np.abs(theirs[test, v] - ours[test, v]).max() / max(np.ptp(theirs[test, v]), 1e-12))
        rhos.append(spearmanr(theirs[test, v], ours[test, v])[0])
        j_ours += objective(weight[v], bias[v], x[train], yv, C)
        j_theirs += objective(svc.coef_[0], float(svc.intercept_[0]), x[train], yv, C)
    seconds = time.perf_counter() - started
    if not fitted:
        raise TagrankError("no tag has both classes in the training split: nothing to compare")
    gaps, rhos = np.array(gaps), np.array(rhos)
    print(f"liblinear: {len(fitted)} of {model.num_tags} tags fitted in {seconds:.1f} s (C={C:g}, squared hinge, "
          f"tol={tol:g}, intercept_scaling={intercept_scaling:g})")
    print(f"per tag, max |ours - liblinear| on test / range of liblinear's: median {np.median(gaps):.2e}, "
          f"95% {np.quantile(gaps, 0.95):.2e}, max {gaps.max():.2e}")
    print("  largest: " + ", ".join(f"{tags[fitted[i]]} {gaps[i]:.2e}" for i in np.argsort(gaps)[::-1][:5]))
    print(f"per tag, Spearman rho on test: median {np.median(rhos):.6f}, min {rhos.min():.6f}")
    print(f"objective J (sum over those tags, LinearSVC's / (C n)): ours {j_ours:.10g}, liblinear {j_theirs:.10g}")
    for name, scores in (("ours", ours), ("liblinear", theirs)):
        ndcg, p = ranking_scores(scores[test], targets[test], model.top_k, model.hparams.relevance)
        print(f"test split, {name}: NDCG {ndcg:.4f}, P {p:.4f} (mean over k = 1..{model.top_k})")


main = command("check_svm", check)


if __name__ == "__main__":
    main()
