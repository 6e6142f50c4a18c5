"""A listwise tag scorer: one score per tag from the image, the tags ranked by score.

image feature -> dropout -> linear (``hidden_size``) -> ReLU -> dropout -> linear -> V scores. No
recurrence: an image's ranked list is the tags sorted by score, so it cannot repeat a tag or stop early,
and its training signal is the whole list at once. Learnt with the listwise losses of
:mod:`tagrank.models.listwise` (``loss``; also LambdaLoss and NeuralNDCG there, and ``annotators``:
learning from each annotator's own list); the default sums two:

- ``plackett_luce``: the exact likelihood of the ground-truth order under the Plackett-Luce model of
  the scores (ListMLE): the first tag is drawn from a softmax over all tags, each next one from a
  softmax over the tags not yet drawn. It learns the order.
- ``listnet``: the cross-entropy between the softmax of the scores and the list's NDCG gains
  (2^rel - 1 of the ``relevance`` grades, normalised to sum 1; ListNet's top-one probabilities): it puts
  the probability where NDCG puts the gain, so a missed first tag costs what it costs the metric.

Why this and not a recurrent decoder: in frozen-feature pilots on Flickr8k (test split, mean over
k = 1..10) the paper's LSTM reached NDCG 0.423 / P 0.345, this head with ``plackett_luce`` 0.522 /
0.435, with ``listnet`` 0.549 / 0.400, with both 0.529 / 0.435 (throwaway scripts; the committed
Table 1 is the evidence). The training recipe (Adam, the learning rate halved on plateau, the staged
fine-tuning of the backbone) is the paper's, shared with the recurrent methods (:class:`StagedTagger`).

Stop rule (variable-length output): after each validation during fitting, the softmax probability
threshold that maximises the mean set F1 on the validation split is stored with the weights
(``stop_threshold``); at test time the tags above it (at least one, at most ``top_k``) are the image's
set, scored by set precision / recall / F1 beside the fixed-length Table 1 metrics.
"""

from __future__ import annotations

import torch
from torch import nn

from tagrank.config import Fraction, NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt
from tagrank.metrics import Relevance
from tagrank.models.base import Factor
from tagrank.models.listwise import Annotators, ListwiseTagger, Loss


def best_threshold(probs: torch.Tensor, hits: torch.Tensor, truth: torch.Tensor) -> float:
    """The probability threshold whose sets (the tags above it, at least one) have the highest mean F1.

    ``probs`` [N, K] each image's top-K probabilities in decreasing order, ``hits`` [N, K] whether each
    is in the ground truth, ``truth`` [N] the ground-truth sizes. Candidates: every probability seen."""
    cum = hits.double().cumsum(1)
    best, best_f1 = float(probs[:, 0].min()), -1.0
    for tau in torch.unique(probs).tolist():
        size = (probs >= tau).sum(1).clamp(min=1)
        found = cum.gather(1, (size - 1)[:, None])[:, 0]
        f1 = (2 * found / (size + truth)).mean().item()  # 2PR/(P+R) = 2 hits / (named + truth)
        if f1 > best_f1:
            best, best_f1 = tau, f1
    return best


class ListwiseScorer(ListwiseTagger):
    def __init__(self, num_tags: int, backbone: str = "efficientnet_lite0", hidden_size: PositiveInt = 512,
                 dropout: Fraction = 0.5, loss: Loss = "both", lr: PositiveFloat = 4e-4,
                 betas: tuple[float, float] = (0.8, 0.999), eps: PositiveFloat = 1e-8, lr_factor: Factor = 0.5,
                 lr_patience: NonNegativeInt = 2, finetune_after_steps: NonNegativeInt = 7500,
                 finetune_lr: PositiveFloat = 1e-5, finetune_weight_decay: NonNegativeFloat = 1e-3,
                 top_k: PositiveInt = 10, relevance: Relevance = "linear",
                 annotators: Annotators = "merged") -> None:
        super().__init__(num_tags, backbone, top_k, relevance)
        self.save_hyperparameters()
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(self.feature_dim, hidden_size), nn.ReLU(),
                                  nn.Dropout(dropout), nn.Linear(hidden_size, num_tags))
        # Chosen on the validation split during fitting (see the module docstring); saved with the weights.
        self.register_buffer("stop_threshold", torch.tensor(-1.0))
        self._val_tops: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Tag scores [B, V] for image features [B, D]."""
        return self.head(features)

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        batch = {**batch, "computed_features": self.image_features(batch)}  # one backbone pass for both
        preds = self._evaluate(batch, "val", self.val_metrics)
        if self.validating_to_fit:
            probs = self(batch["computed_features"]).float().softmax(-1).gather(1, preds)
            target = batch["target"]
            hits = ((preds[:, :, None] == target[:, None, :]) & (target >= 0)[:, None, :]).any(-1)
            self._val_tops.append((probs.cpu(), hits.cpu(), (target >= 0).sum(1).cpu()))

    def on_validation_epoch_end(self) -> None:
        if self._val_tops:
            probs, hits, truth = (torch.cat(parts) for parts in zip(*self._val_tops))
            keep = truth > 0
            self.stop_threshold.fill_(best_threshold(probs[keep], hits[keep], truth[keep].double()))
            self._val_tops = []
        super().on_validation_epoch_end()

    def predicted_set(self, batch: dict[str, torch.Tensor], preds: torch.Tensor) -> torch.Tensor | None:
        if float(self.stop_threshold) < 0:  # never validated while fitting: no rule to apply
            return None
        probs = self(self.image_features(batch)).float().softmax(-1).gather(1, preds)
        above = probs >= self.stop_threshold
        above[:, 0] = True
        return preds.masked_fill(~above, -1)

    def stop_rule(self) -> str | None:
        threshold = self.stop_score()
        return None if threshold is None else f"the tags of softmax probability >= {threshold:.4g}, chosen on the validation split"

    def stop_score(self) -> float | None:
        threshold = float(self.stop_threshold)
        return None if threshold < 0 else threshold
