"""The floor any learned method must beat: the training set's tags in frequency order, for every image.

Nothing is learned by gradient: fitting counts how often each tag occurs in the training split (the
``counts`` buffer, saved in the checkpoint); one pass over the training loader logs the prior's loss,
after which the run stops itself (:class:`~tagrank.models.base.SolvedTagger`). Ranking is by count, ties
by tag id (:func:`by_frequency`): the same prior that :func:`frequency_prior` scores beside every run's
table, in the ``frequency_prior`` block of its ``metrics.json``.

The logged loss is the cross-entropy of each image's ground-truth tags under the add-one-smoothed tag
distribution (summed over the list, averaged over images): the score of a unigram "model".
"""

from __future__ import annotations

import torch

from tagrank.config import PositiveInt
from tagrank.metrics import RankingMetrics, Relevance
from tagrank.models.base import SolvedTagger


def training_counts(dm) -> torch.Tensor:
    """How often each tag id occurs in the training split's lists [num_tags]."""
    target = dm.targets[dm.rows("train")]
    return torch.bincount(target[target >= 0], minlength=len(dm.vocab))


def by_frequency(counts: torch.Tensor, k: int) -> torch.Tensor:
    """The ``k`` most frequent tag ids, by count, ties by tag id [min(k, num_tags)]."""
    # A key with no ties rather than a stable sort (which ONNX has no operator for).
    key = counts * len(counts) - torch.arange(len(counts), device=counts.device)
    return key.argsort(descending=True)[:k]


def frequency_prior(dm, rows: list[int], k: int, relevance: Relevance = "linear") -> dict[str, float]:
    """The floor any method must beat, scored beside every run's table: the training split's most
    frequent tags, in order, for every image (scored on the manifest ``rows``)."""
    metric = RankingMetrics(k, relevance, sync_on_compute=False)  # computed on one process (rank 0 under DDP)
    prior = by_frequency(training_counts(dm), k).expand(len(rows), -1)
    metric.update(prior, dm.targets[rows])
    return {key: float(v) for key, v in metric.compute().items()}


class FrequencyPrior(SolvedTagger):
    def __init__(self, num_tags: int, backbone: str = "efficientnet_lite0", top_k: PositiveInt = 10,
                 relevance: Relevance = "linear") -> None:
        super().__init__(num_tags, backbone, top_k, relevance)
        self.save_hyperparameters()
        self.register_buffer("counts", torch.zeros(num_tags, dtype=torch.long))

    def fit_training_split(self, dm) -> None:
        self.counts.copy_(training_counts(dm))

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        target = batch["target"]
        log_p = torch.log((self.counts + 1.0) / (self.counts.sum() + self.num_tags))
        return -(log_p[target.clamp(min=0)] * (target >= 0)).sum() / len(target)

    def rank(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        order = by_frequency(self.counts, self.top_k)
        return order.expand(batch["target"].shape[0], -1)  # shape[0]: traced as the batch size

    def tag_scores(self, features: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """The tag's share of the training split's tag occurrences. The same for every image."""
        share = self.counts.float() / self.counts.sum().clamp(min=1)
        return share[ids.clamp(min=0)]
