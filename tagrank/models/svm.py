"""The paper's "SVM" baseline: one linear SVM per tag (one-vs-rest) on the frozen backbone's features.

Scores s_v(x) = w_v . phi(x) + b_v for every tag v; an image's tags are ranked by decision value. Fitting
solves the primal of all V one-vs-rest problems at once on the cached features of the n training images:

    J(W, b) = ||W||^2 / (2 C n)  +  (1/n) sum_i sum_v  l(y_iv * s_v(x_i)),   y_iv = +1 if v in GT_i else -1

with l(m) = max(0, 1 - m)^2, the squared hinge. Per tag this is 1/(C n) times the objective of
scikit-learn's ``LinearSVC(C=C)`` (its default, the L2-loss SVM), so the minimiser is the same, except
that the bias is not regularised here, as in the textbook SVM (liblinear appends a constant feature
``intercept_scaling`` and regularises its weight; with a large ``intercept_scaling`` it tends to ours).

Why this solver: the squared hinge has a continuous gradient, so full-batch L-BFGS with a strong-Wolfe line
search (``torch.optim.LBFGS``, float64) reaches the optimum to a tight tolerance, the same optimum for every
seed (nothing random enters), in a few hundred matrix products. Minibatch Adam did not: two seeds differed
by 0.019 NDCG on Flickr8k. ``tol`` bounds the largest gradient entry relative to its value at W = 0 (in
the solver's whitened coordinates, see :class:`Primal`; in W it ends within a small factor of it). The
plain hinge (``loss=hinge``, LinearSVC's L1-loss SVM) has no gradient at the margin, where L-BFGS stalls
short of the optimum: fitting refuses it with a message (it stays readable in old checkpoints, and is
still a valid logged loss for them). Features are centred on the training mean while solving: with an
unregularised bias that is an exact change of variables (b absorbs w . mean), and it removes the large
common direction of CNN features that otherwise dominates the curvature and slows L-BFGS down.

``C=auto`` (default) chooses C on the validation split, as the paper chose it by cross-validation: one
solve per value of ``C_grid``, in increasing order, each warm-started from the previous solution, scored by
val mean NDCG (the metric checkpoints are selected on); the best is kept (ties: the smaller C). The val
score rises and then falls with C, and a larger C takes more iterations, so the grid stops once
``C_patience`` values came after the best that scored below it: a wide grid costs little. Each
solve's objective, iterations, time and val score are logged, and the chosen C is saved in the checkpoint
(buffer ``fitted_C``). A number fixes C. After the solve the run stops itself
(:class:`~tagrank.models.base.SolvedTagger`).

``scaling=l2`` (default) divides every feature vector by its L2 norm before the linear layer: a fixed
per-image scaling with no statistics to estimate, the usual preparation of CNN features for linear SVMs
(it makes C comparable across backbones); ``none`` uses the raw features.

:class:`LinearSVM` is also the base of ``svm_rank``, which changes only the data term.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from tagrank.config import PositiveFloat, PositiveInt
from tagrank.errors import TagrankError
from tagrank.metrics import RankingMetrics, Relevance
from tagrank.models.base import SolvedTagger

log = logging.getLogger("tagrank")

Loss = Literal["squared_hinge", "hinge"]
Scaling = Literal["l2", "none"]
# Data terms are evaluated over chunks of images of at most this many (image, list place, tag) entries,
# so that SVM-rank's pair terms never exist for all images at once (8 MiB in float64; larger is no faster).
CHUNK_ENTRIES = 2**20

DataTerm = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (scores [B, V], target [B, L]) -> [B]


def hinge(margin: torch.Tensor, kind: str = "squared_hinge") -> torch.Tensor:
    """max(0, 1 - margin), or its square."""
    h = torch.relu(1.0 - margin)
    return h * h if kind == "squared_hinge" else h


def presence(target: torch.Tensor, num_tags: int) -> torch.Tensor:
    """Multi-hot [B, V] of the ground-truth tags of each image (padding -1 ignored)."""
    y = torch.zeros(len(target), num_tags + 1, dtype=torch.bool, device=target.device)
    y[torch.arange(len(target), device=target.device)[:, None], target.clamp(min=-1) % (num_tags + 1)] = True
    return y[:, :num_tags]  # column V is where the padding went


@dataclass
class Solve:
    """What one L-BFGS solve reached."""

    C: float
    objective: float
    iterations: int
    gradient: float  # largest gradient entry at the end, relative to the largest at W = 0
    seconds: float
    val_ndcg: float = math.nan


class Primal:
    """J(W, b) above for one training set and data term, and its minimisation by full-batch L-BFGS.

    ``features`` [n, D] (float64, centred), ``target`` [n, L] the ground-truth lists, ``curvature`` the
    data term's mean second derivative in one score at W = 0 (2 for the one-vs-rest squared hinge). The
    data term's gradient with respect to the scores is taken by autograd chunk by chunk of images (bounded
    memory); the gradient with respect to W is then one matrix product over all images.

    L-BFGS runs in whitened coordinates U, W = U P with P = (I / (C n) + curvature * Cov)^(-1/2), Cov =
    X^T X / n: an exact change of variables (the same J and minimiser), under which the Hessian of J in W
    at W = 0 is (about) the identity. CNN features have a few directions of large variance and many of small; without
    it L-BFGS needs 4-5 times the iterations on Flickr8k's features.
    """

    def __init__(self, features: torch.Tensor, target: torch.Tensor, data_term: DataTerm, num_tags: int,
                 curvature: float) -> None:
        self.features, self.target, self.data_term = features, target, data_term
        self.n = len(features)
        self.chunk = max(1, CHUNK_ENTRIES // (max(target.shape[1], 1) * num_tags))
        eigenvalues, self.basis = torch.linalg.eigh(features.T @ features / self.n)
        self.curvatures = curvature * eigenvalues.clamp(min=0)
        zeros = torch.zeros(num_tags, features.shape[1], dtype=features.dtype), torch.zeros(num_tags, dtype=features.dtype)
        self.value_at_zero, self.grad_w_at_zero, self.grad_b_at_zero = self.evaluate(*zeros, 1.0)

    def evaluate(self, weight: torch.Tensor, bias: torch.Tensor, C: float) -> tuple[float, torch.Tensor, torch.Tensor]:
        """J(W, b) and its gradient (with respect to W, b)."""
        scores = torch.addmm(bias, self.features, weight.T)
        d_scores = torch.empty_like(scores)
        data = 0.0
        for start in range(0, self.n, self.chunk):
            rows = slice(start, start + self.chunk)
            s = scores[rows].detach().requires_grad_()
            with torch.enable_grad():
                term = self.data_term(s, self.target[rows]).sum()
                d_scores[rows] = torch.autograd.grad(term, s)[0]
            data += term.item()
        grad_w = d_scores.T @ self.features / self.n + weight / (C * self.n)
        value = data / self.n + weight.pow(2).sum().item() / (2 * C * self.n)
        return value, grad_w, d_scores.sum(0) / self.n

    def relative_gradient(self, grad_w: torch.Tensor, grad_b: torch.Tensor) -> float:
        """The largest gradient entry relative to the largest at W = 0: how far from stationary."""
        at_zero = max(self.grad_w_at_zero.abs().max().item(), self.grad_b_at_zero.abs().max().item(), 1e-300)
        return max(grad_w.abs().max().item(), grad_b.abs().max().item()) / at_zero

    def solve(self, weight: torch.Tensor, bias: torch.Tensor, C: float, tol: float, max_iter: int) -> Solve:
        """Minimise J for this C from (and into) ``weight`` [V, D] and ``bias`` [V] (a warm start)."""
        started = time.perf_counter()
        scale = (1.0 / (C * self.n) + self.curvatures).rsqrt()
        P = (self.basis * scale) @ self.basis.T
        u = weight @ (self.basis / scale) @ self.basis.T  # W P^-1
        u_tolerance = tol * max((self.grad_w_at_zero @ P).abs().max().item(), self.grad_b_at_zero.abs().max().item())
        optimizer = torch.optim.LBFGS([u, bias], lr=1.0, max_iter=max_iter, max_eval=2 * max_iter, history_size=20,
                                      line_search_fn="strong_wolfe", tolerance_grad=u_tolerance,
                                      tolerance_change=1e-15 * max(self.value_at_zero, 1.0))  # rounding noise

        def closure() -> float:
            value, grad_w, bias.grad = self.evaluate(u @ P, bias, C)
            u.grad = grad_w @ P
            return value

        optimizer.step(closure)
        weight.copy_(u @ P)
        value, grad_w, grad_b = self.evaluate(weight, bias, C)
        bias.grad = None
        result = Solve(C, value, optimizer.state[u].get("n_iter", 0), self.relative_gradient(grad_w, grad_b),
                       time.perf_counter() - started)
        if result.iterations >= max_iter:
            log.warning("SVM solve for C=%g stopped at model.max_iter=%d iterations, at a relative gradient of %.1e",
                        C, max_iter, result.gradient)
        return result


class LinearSVM(SolvedTagger):
    # The settings' types and ranges are checked from this signature before anything is built; C and
    # C_grid (a choice or a range, a list of ranges) also here.
    def __init__(self, num_tags: int, backbone: str = "efficientnet_lite0",
                 C: PositiveFloat | Literal["auto"] = "auto",
                 C_grid: list[float] = (1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 0.01, 0.03, 0.1, 0.3, 1, 3, 10, 30),
                 C_patience: PositiveInt = 2, loss: Loss = "squared_hinge", scaling: Scaling = "l2",
                 tol: PositiveFloat = 1e-6, max_iter: PositiveInt = 3000, top_k: PositiveInt = 10,
                 relevance: Relevance = "linear") -> None:
        super().__init__(num_tags, backbone, top_k, relevance)
        self.save_hyperparameters()
        if not (C == "auto" or (isinstance(C, (int, float)) and C > 0)):
            raise TagrankError(f"model.C={C!r}: expected auto or a number > 0")
        if C == "auto" and not (C_grid and all(c > 0 for c in C_grid)):
            raise TagrankError(f"model.C_grid={list(C_grid)!r}: expected a non-empty list of numbers > 0 for C=auto")
        self.linear = nn.Linear(self.feature_dim, num_tags)
        # The C the weights were solved with (C=auto: the one chosen on val); saved with them.
        self.register_buffer("fitted_C", torch.tensor(math.nan if C == "auto" else float(C), dtype=torch.float64))
        self.n_train = 0  # training-set size, set by the fit (the regulariser of the logged training loss)
        self.solves: list[Solve] = []

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        checkpoint["state_dict"].setdefault("fitted_C", self.fitted_C.clone())  # checkpoints before C=auto

    def scale(self, features: torch.Tensor) -> torch.Tensor:
        if self.hparams.scaling == "l2":
            return features / features.norm(dim=-1, keepdim=True).clamp(min=1e-12)
        return features

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Decision values [B, V]."""
        return self.linear(self.scale(features))

    def data_term(self, scores: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Per-image sum of the V one-vs-rest hinge losses [B]."""
        y = presence(target, self.num_tags).to(scores.dtype) * 2 - 1
        return hinge(y * scores, self.hparams.loss).sum(-1)

    def curvature(self, target: torch.Tensor) -> float:
        """The data term's mean second derivative in one score s_v(x_i) at W = 0 (for the solver's
        whitening): every margin is active there and the squared hinge's second derivative is 2."""
        return 2.0

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """J on a minibatch while training (the value the solve minimised, estimated); the mean data term
        alone when evaluating."""
        data = self.data_term(self(self.image_features(batch)), batch["target"]).mean()
        if not self.training:
            return data
        return data + self.linear.weight.pow(2).sum() / (2 * float(self.fitted_C) * max(self.n_train, 1))

    def rank(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        scores = self(self.image_features(batch))
        return scores.topk(min(self.top_k, self.num_tags), dim=-1).indices

    def tag_scores(self, features: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """The tag's decision value w_v . phi(x) + b_v."""
        return self(features).gather(-1, ids.clamp(min=0))

    # -- fitting ---------------------------------------------------------------------------------
    def fit_training_split(self, dm) -> None:
        self.fit_features(dm.features, dm.targets, dm.rows("train"), dm.rows("val"))

    def fit_features(self, features: torch.Tensor | None, targets: torch.Tensor, train: list[int],
                     val: list[int]) -> list[Solve]:
        """Solve on the ``train`` rows for each C to try (C=auto: the grid, upwards; else the given C), keep
        the one with the best mean NDCG on the ``val`` rows, and set the weights to it."""
        hp = self.hparams
        if hp.loss == "hinge":
            raise TagrankError("model.loss=hinge: the L1-loss SVM is not differentiable at the margin and the "
                               "full-batch L-BFGS solver cannot certify its optimum; use model.loss=squared_hinge "
                               "(scikit-learn LinearSVC's default L2-loss SVM)")
        if features is None:
            raise TagrankError(f"{type(self).__name__} is fitted on cached features of the frozen backbone, and "
                               "the data module has none attached")
        x = self.scale(features.double())
        mean = x[train].mean(0)
        problem = Primal(x[train] - mean, targets[train], self.data_term, self.num_tags, self.curvature(targets[train]))
        weight = torch.zeros(self.num_tags, x.shape[1], dtype=torch.float64)
        bias = torch.zeros(self.num_tags, dtype=torch.float64)  # of the centred features
        auto = hp.C == "auto"
        grid = sorted(float(c) for c in hp.C_grid) if auto else [float(hp.C)]
        best: tuple[Solve, torch.Tensor, torch.Tensor] | None = None
        self.solves = []
        for C in grid:
            result = problem.solve(weight, bias, C, hp.tol, hp.max_iter)  # warm-started from the last C
            real_bias = bias - weight @ mean  # the bias of the uncentred features
            if auto:
                result.val_ndcg = self.val_score(x[val] @ weight.T + real_bias, targets[val])
            log.info("%s: C=%g objective %.6g after %d L-BFGS iterations (relative gradient %.1e, %.1f s)%s",
                     type(self).__name__, C, result.objective, result.iterations, result.gradient, result.seconds,
                     f", val NDCG {result.val_ndcg:.4f}" if auto else "")
            self.solves.append(result)
            if best is None or result.val_ndcg > best[0].val_ndcg:
                best, below = (result, weight.clone(), real_bias), 0
            elif result.val_ndcg < best[0].val_ndcg:
                below += 1
                if below >= hp.C_patience:
                    break  # val NDCG is past its peak; a larger C would only cost more iterations
        chosen, best_weight, best_bias = best
        if auto:
            log.info("%s: C=%g chosen on the validation split", type(self).__name__, chosen.C)
            if len(grid) > 1 and chosen.C in (grid[0], grid[-1]):
                log.warning("%s: the chosen C=%g is at the end of model.C_grid=%s: the best C may lie beyond it",
                            type(self).__name__, chosen.C, grid)
        with torch.no_grad():
            self.linear.weight.copy_(best_weight)
            self.linear.bias.copy_(best_bias)
            self.fitted_C.fill_(chosen.C)
        self.n_train = len(train)
        return self.solves

    def val_score(self, scores: torch.Tensor, target: torch.Tensor) -> float:
        """Mean NDCG over k of the ranking by ``scores`` [B, V]: what checkpoints are selected on."""
        metric = RankingMetrics(self.top_k, self.hparams.relevance, sync_on_compute=False)
        metric.update(scores.topk(min(self.top_k, self.num_tags), dim=-1).indices, target)
        return float(metric.compute()["ndcg_mean"])

    def on_train_epoch_end(self) -> None:
        super().on_train_epoch_end()
        chosen = next(s for s in self.solves if s.C == float(self.fitted_C))
        self.log_dict({"fit/C": chosen.C, "fit/objective": chosen.objective, "fit/iterations": float(chosen.iterations),
                       "fit/relative_gradient": chosen.gradient})
        if self.hparams.C == "auto":
            self.log_dict({f"fit/val_ndcg_mean@C={s.C:g}": s.val_ndcg for s in self.solves})
