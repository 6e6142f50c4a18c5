"""The paper's "SVM-rank" baseline: a linear ranking SVM in Joachims' pairwise formulation.

Tag v of image x scores s_v(x) = w_v . phi(x) + b_v (the joint feature map phi(x) (x) e_v, so one weight
vector per tag, as in the SVM baseline). Each image is one query whose items are the V tags, graded by
ground-truth rank: the tag at rank r of n gets grade n - r + 1, an absent tag grade 0. Every pair with
grade(a) > grade(b) is a constraint s_a - s_b >= 1 - xi_ab: each ground-truth tag outranks each absent
tag, and a higher-ranked ground-truth tag outranks a lower one. The primal, per training image:

    J(W, b) = ||W||^2 / (2 C n)  +  (1/n) sum_i sum_{(a, b) in pairs(i)} hinge(s_a(x_i) - s_b(x_i))

(Joachims' 1/2 ||w||^2 + C sum xi divided by C n), optimised like :class:`~tagrank.models.svm.LinearSVM`
(same feature scaling, Adam, cosine-annealed learning rate). Tags are ranked by score.
"""

from __future__ import annotations

import torch

from tagrank.config import PositiveFloat, PositiveInt
from tagrank.metrics import Relevance
from tagrank.models.svm import LinearSVM, Loss, Scaling, hinge


def grades(target: torch.Tensor, num_tags: int) -> torch.Tensor:
    """Grade of every tag per image [B, V]: n - r + 1 for the tag at (1-based) rank r of n, 0 if absent."""
    valid = target >= 0
    n = valid.sum(-1, keepdim=True)
    rank = torch.arange(1, target.shape[1] + 1, device=target.device).expand_as(target)
    g = torch.zeros(len(target), num_tags + 1, dtype=torch.long, device=target.device)
    g.scatter_(1, torch.where(valid, target, num_tags), torch.where(valid, n - rank + 1, 0))
    return g[:, :num_tags]


def pairwise_hinge(scores: torch.Tensor, target: torch.Tensor, kind: str = "hinge") -> torch.Tensor:
    """Per-image sum over ordered pairs (grade a > grade b) of hinge(s_a - s_b) [B]."""
    g = grades(target, scores.shape[1])
    pairs = g[:, :, None] > g[:, None, :]  # [B, a, b]
    margin = scores[:, :, None] - scores[:, None, :]
    return (hinge(margin, kind) * pairs).sum((1, 2))


class RankSVM(LinearSVM):
    def __init__(self, num_tags: int, backbone: str = "efficientnet_lite0", C: PositiveFloat = 1.0,
                 loss: Loss = "hinge", scaling: Scaling = "l2", lr: PositiveFloat = 0.01, top_k: PositiveInt = 10,
                 relevance: Relevance = "linear") -> None:
        super().__init__(num_tags, backbone, C, loss, scaling, lr, top_k, relevance)

    def data_term(self, scores: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return pairwise_hinge(scores, target, self.hparams.loss)
