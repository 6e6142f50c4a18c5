"""The paper's "SVM-rank" baseline: a linear ranking SVM in Joachims' pairwise formulation.

Tag v of image x scores s_v(x) = w_v . phi(x) + b_v (the joint feature map phi(x) (x) e_v, so one weight
vector per tag, as in the SVM baseline). Each image is one query whose items are the V tags, graded by
ground-truth rank: the tag at rank r of n gets grade n - r + 1, an absent tag grade 0. Every pair with
grade(a) > grade(b) is a constraint s_a - s_b >= 1 - xi_ab: each ground-truth tag outranks each absent
tag, and a higher-ranked ground-truth tag outranks a lower one. The primal, per training image:

    J(W, b) = ||W||^2 / (2 C n)  +  (1/n) sum_i sum_{(a, b) in pairs(i)} l(s_a(x_i) - s_b(x_i))

(Joachims' 1/2 ||w||^2 + C sum xi divided by C n), with l the squared hinge (the L2-loss ranking SVM),
solved like :class:`~tagrank.models.svm.LinearSVM`: full-batch L-BFGS on the cached features, C chosen on
the validation split (``C=auto``), the same feature scaling. Tags are ranked by score.

The higher-graded tag a of every pair is on the image's ground-truth list, so the pair terms are computed
per filled list place ([places, tags]: about V x list length pairs an image), never [images, tags, tags].
"""

from __future__ import annotations

import torch

from tagrank.models.svm import LinearSVM, hinge


def grades(target: torch.Tensor, num_tags: int) -> torch.Tensor:
    """Grade of every tag per image [B, V]: n - r + 1 for the tag at (1-based) rank r of n, 0 if absent."""
    valid = target >= 0
    n = valid.sum(-1, keepdim=True)
    rank = torch.arange(1, target.shape[1] + 1, device=target.device).expand_as(target)
    g = torch.zeros(len(target), num_tags + 1, dtype=torch.long, device=target.device)
    g.scatter_(1, torch.where(valid, target, num_tags), torch.where(valid, n - rank + 1, 0))
    return g[:, :num_tags]


def pairwise_hinge(scores: torch.Tensor, target: torch.Tensor, kind: str = "squared_hinge") -> torch.Tensor:
    """Per-image sum over ordered pairs (grade a > grade b) of hinge(s_a - s_b) [B].

    The higher tag a of a pair is on the ground-truth list, so the pairs are taken per list place (only
    the filled ones): [places, V], never [B, V, V].
    """
    g = grades(target, scores.shape[1])  # [B, V]
    image, place = (target >= 0).nonzero(as_tuple=True)
    a = target[image, place]
    pairs = g[image, a][:, None] > g[image]  # [places, V]
    margin = scores[image, a][:, None] - scores[image]
    per_place = (hinge(margin, kind) * pairs).sum(-1)
    return torch.zeros(len(target), dtype=scores.dtype, device=scores.device).index_add(0, image, per_place)


class RankSVM(LinearSVM):
    def curvature(self, target: torch.Tensor) -> float:
        """The data term's mean second derivative in one score at W = 0 (for the solver's whitening): a
        tag in d pairs of an image gets 2d; an image with n of the V tags has nV - n(n+1)/2 pairs, each
        touching two scores."""
        n = (target >= 0).sum(-1).double()
        return float((4 * (n * self.num_tags - n * (n + 1) / 2) / self.num_tags).mean())

    def data_term(self, scores: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return pairwise_hinge(scores, target, self.hparams.loss)
