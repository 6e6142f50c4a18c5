"""The paper's method ("Ours"): an LSTM that reads the image at every step and emits one tag per step.

v = W_I CNN(I) + b_I (d = ``proj_dim``); the LSTM's gates take v at every time step together with
h_{t-1} (no previous-tag input, unlike captioning); z_t = W h_t + b; softmax over the V tags. The loss is
the cross-entropy of the ground-truth tag at each step, summed over the list (Eq. 19) and averaged over
the batch. Decoding emits the ``top_k`` steps' best tags, skipping tags already emitted.
"""

from __future__ import annotations

import torch
from torch import nn

from tagrank.config import Fraction, NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt
from tagrank.metrics import Relevance
from tagrank.models.base import Factor, RecurrentTagger, greedy_distinct


class LSTMTagger(RecurrentTagger):
    def __init__(self, num_tags: int, backbone: str = "efficientnet_lite0", proj_dim: PositiveInt = 100,
                 hidden_size: PositiveInt = 300, dropout: Fraction = 0.5, lr: PositiveFloat = 4e-4,
                 betas: tuple[float, float] = (0.8, 0.999), eps: PositiveFloat = 1e-8, lr_factor: Factor = 0.5,
                 lr_patience: NonNegativeInt = 2, finetune_after_steps: NonNegativeInt = 7500,
                 finetune_lr: PositiveFloat = 1e-5, finetune_weight_decay: NonNegativeFloat = 1e-3,
                 top_k: PositiveInt = 10, relevance: Relevance = "linear") -> None:
        super().__init__(num_tags, backbone, top_k, relevance)
        self.save_hyperparameters()
        self.proj = nn.Linear(self.feature_dim, proj_dim)
        self.lstm = nn.LSTM(proj_dim, hidden_size, batch_first=True)
        self.drop = nn.Dropout(dropout)
        self.out = nn.Linear(hidden_size, num_tags)

    def forward(self, features: torch.Tensor, steps: int) -> torch.Tensor:
        """Per-step tag logits [B, steps, V] for image features [B, D]."""
        v = self.drop(self.proj(features))
        h, _ = self.lstm(v.unsqueeze(1).expand(-1, steps, -1))
        return self.out(self.drop(h))

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        target = batch["target"]
        logits = self(self.image_features(batch), target.shape[1])
        ce = nn.functional.cross_entropy(logits.flatten(0, 1), target.flatten(), ignore_index=-1, reduction="sum")
        return ce / len(target)

    def rank(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return greedy_distinct(self(self.image_features(batch), self.top_k))
