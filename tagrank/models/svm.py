"""The paper's "SVM" baseline: one linear SVM per tag (one-vs-rest) on the frozen backbone's features.

Scores s_v(x) = w_v . phi(x) + b_v for every tag v; an image's tags are ranked by decision value. The
model minimises the SVM primal of all V one-vs-rest problems at once, written per training image so
that a minibatch gives an unbiased estimate of it:

    J(W, b) = ||W||^2 / (2 C n)  +  (1/n) sum_i sum_v  hinge(y_iv * s_v(x_i)),   y_iv = +1 if v in GT_i else -1

which is n * C times the objective of scikit-learn's ``LinearSVC(C=C, loss="hinge")`` (liblinear) for
each tag, so it has the same minimiser (the bias is not regularised, as in the textbook SVM; liblinear
shrinks it a little). ``loss=squared_hinge`` gives LinearSVC's default L2-loss SVM instead. It is
optimised by Adam on the primal with a learning rate annealed to zero (cosine) over the run; the test
suite checks the rankings against LinearSVC's.

``scaling=l2`` (default) divides every feature vector by its L2 norm before the linear layer: a fixed
per-image scaling with no statistics to estimate, the usual preparation of CNN features for linear SVMs
(it makes C comparable across backbones); ``none`` uses the raw features.

:class:`LinearSVM` is also the base of ``svm_rank``, which changes only the data term.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import nn

from tagrank.config import PositiveFloat, PositiveInt
from tagrank.metrics import Relevance
from tagrank.models.base import RankedTagger

Loss = Literal["hinge", "squared_hinge"]
Scaling = Literal["l2", "none"]


def hinge(margin: torch.Tensor, kind: str = "hinge") -> torch.Tensor:
    """max(0, 1 - margin), or its square."""
    h = torch.relu(1.0 - margin)
    return h * h if kind == "squared_hinge" else h


def presence(target: torch.Tensor, num_tags: int) -> torch.Tensor:
    """Multi-hot [B, V] of the ground-truth tags of each image (padding -1 ignored)."""
    y = torch.zeros(len(target), num_tags + 1, dtype=torch.bool, device=target.device)
    y[torch.arange(len(target), device=target.device)[:, None], target.clamp(min=-1) % (num_tags + 1)] = True
    return y[:, :num_tags]  # column V is where the padding went


class LinearSVM(RankedTagger):
    # The settings' types and ranges are checked from this signature before anything is built.
    def __init__(self, num_tags: int, backbone: str = "efficientnet_lite0", C: PositiveFloat = 10.0,
                 loss: Loss = "hinge", scaling: Scaling = "l2", lr: PositiveFloat = 0.01, top_k: PositiveInt = 10,
                 relevance: Relevance = "linear") -> None:
        super().__init__(num_tags, backbone, top_k, relevance)
        self.save_hyperparameters()
        self.linear = nn.Linear(self.feature_dim, num_tags)
        nn.init.zeros_(self.linear.weight)  # the SVM problem is convex: start at w = 0 like liblinear
        nn.init.zeros_(self.linear.bias)
        self.n_train = 0  # training-set size, read from the train loader when fitting starts

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

    def regulariser(self) -> torch.Tensor:
        return self.linear.weight.pow(2).sum() / (2 * self.hparams.C * max(self.n_train, 1))

    def on_train_start(self) -> None:
        self.n_train = len(self.trainer.train_dataloader.dataset)

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The primal objective J on a minibatch while training; the mean data term alone when evaluating."""
        data = self.data_term(self(self.image_features(batch)), batch["target"]).mean()
        return data + self.regulariser() if self.training else data

    def rank(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        scores = self(self.image_features(batch))
        return scores.topk(min(self.top_k, self.num_tags), dim=-1).indices

    def configure_optimizers(self):
        params = [p for n, p in self.named_parameters() if not n.startswith("backbone.")]
        optimizer = torch.optim.Adam(params, lr=self.hparams.lr)
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * min(step, total) / total)))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
