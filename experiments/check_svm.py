"""Check the SVM baseline against scikit-learn's LinearSVC (liblinear) on a dataset's cached features.

    python experiments/check_svm.py --run logs/train/runs/<time>     # that run's best.ckpt, its data and backbone
    python experiments/check_svm.py data=flickr8k data.root=../shared/data/flickr8k model.C=0.1   # fit ours now
    (without --run: tagrank-train overrides; model.C=auto solves the grid and compares at the chosen C)

Why: ``model=svm`` solves all one-vs-rest problems at once with L-BFGS (tagrank/models/svm.py); this fits
liblinear's L2-loss SVM per tag with the same C, loss and features, and prints how far the two are apart:
per tag, the largest gap between the decision values on the test images relative to their range, and
the rank correlation; the objective J of both; the test NDCG / P (mean over k) of each; and the time each
took. liblinear regularises the bias as the weight of a constant feature ``intercept_scaling`` (default
here 1000, where that penalty is negligible and the two problems coincide).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import hydra
import numpy as np
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf
from scipy.stats import spearmanr
from sklearn.svm import LinearSVC

from tagrank import CONF_DIR
from tagrank.errors import TagrankError
from tagrank.metrics import RankingMetrics
from tagrank.models.svm import LinearSVM, presence
from tagrank.pipeline import attach_inputs, build_data, build_model, checkpoint_class


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, help="a tagrank-train run directory of model=svm")
    parser.add_argument("--intercept-scaling", type=float, default=1000.0,
                        help="liblinear's constant feature (default 1000)")
    parser.add_argument("--tol", type=float, default=1e-10,
                        help="liblinear's stopping tolerance (default 1e-10: at its own 1e-4 it stops visibly short)")
    parser.add_argument("overrides", nargs="*", help="tagrank-train overrides (without --run): data=..., model.C=...")
    args = parser.parse_args(argv)
    if args.run and args.overrides:
        parser.error("--run takes the run's own settings: no overrides")
    return args


def load_setup(args: argparse.Namespace) -> tuple[DictConfig, LinearSVM | None]:
    """The run's config and fitted model (``--run``), or a composed ``model=svm`` config and no model yet."""
    if args.run:
        run = args.run
        if not (run / ".hydra/config.yaml").is_file() or not (run / "checkpoints/best.ckpt").is_file():
            raise TagrankError(f"--run {run}: expected a tagrank-train run directory (.hydra/config.yaml, "
                               "checkpoints/best.ckpt)")
        ckpt = run / "checkpoints/best.ckpt"
        model = hydra.utils.get_class(checkpoint_class(ckpt)).load_from_checkpoint(ckpt, weights_only=True)
        if type(model) is not LinearSVM:
            raise TagrankError(f"--run {run}: its checkpoint is a {type(model).__name__}, not model=svm")
        return OmegaConf.load(run / ".hydra/config.yaml"), model
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(config_name="train", overrides=["model=svm", *args.overrides]), None


def ranking_scores(scores: np.ndarray, target: torch.Tensor, top_k: int, relevance: str) -> tuple[float, float]:
    metric = RankingMetrics(top_k, relevance, sync_on_compute=False)
    metric.update(torch.from_numpy(scores).topk(min(top_k, scores.shape[1]), dim=-1).indices, target)
    out = metric.compute()
    return float(out["ndcg_mean"]), float(out["p_mean"])


def objective(w: np.ndarray, b: float, x: np.ndarray, y: np.ndarray, C: float) -> float:
    """One tag's term of J (our scaling: LinearSVC's objective / (C n)), the bias unregularised."""
    margin = (2.0 * y - 1) * (x @ w + b)
    return float(w @ w / (2 * C * len(x)) + np.mean(np.maximum(0.0, 1.0 - margin) ** 2))


def main(argv: list[str]) -> None:
    args = parse(argv)
    cfg, model = load_setup(args)
    dm = build_data(cfg)
    if model is None:
        model = build_model(cfg, dm.num_tags)
    attach_inputs(cfg, dm, model, need_images=False)
    train, val, test = dm.rows("train"), dm.rows("val"), dm.rows("test")
    if args.run:  # solved again at the run's C: the time it takes, and the same weights
        saved = model
        model = LinearSVM(**{**saved.hparams, "C": float(saved.fitted_C)})
    started = time.perf_counter()
    for s in model.fit_features(dm.features, dm.targets, train, val):
        print(f"ours: C={s.C:g}: {s.iterations} L-BFGS iterations, objective {s.objective:.6g}, relative gradient "
              f"{s.gradient:.1e}, {s.seconds:.1f} s" + ("" if np.isnan(s.val_ndcg) else f", val NDCG {s.val_ndcg:.4f}"))
    print(f"ours: {time.perf_counter() - started:.1f} s in all, C={float(model.fitted_C):g}")
    if args.run:
        gap = (model.linear.weight - saved.linear.weight).abs().max().item()
        print(f"ours: largest weight difference to {args.run}/checkpoints/best.ckpt: {gap:.2e}")
    compare(model, dm.features, dm.targets, train, test, dm.vocab.tags, args.tol, args.intercept_scaling)


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


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except TagrankError as err:
        print(f"check_svm: error: {err}", file=sys.stderr)
        sys.exit(2)
