"""A label-query decoder (Query2Label / ML-Decoder style) over the backbone's spatial feature map.

The last feature map, pooled to ``grid`` x ``grid`` cells (cached as float16 like the pooled features),
is projected to ``d_model`` and given a learned position per cell; one learned query per tag attends
over those cells through ``layers`` Transformer decoder layers (``nn.TransformerDecoderLayer``), and a
per-tag linear read-out gives one score per tag. Why: the pooled vector every other method reads throws
away where things are, while people name what is large and central first; each tag's query can look
at the cells where its evidence lies. Trained with the scorer's listwise losses (``loss``, ``annotators``),
ranked and scored as the scorer is (softmax probabilities): all of it from
:class:`~tagrank.models.listwise.ListwiseTagger`; the paper's training recipe (:class:`StagedTagger`).
"""

from __future__ import annotations

import torch
from torch import nn

from tagrank.config import Fraction, NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt
from tagrank.metrics import Relevance
from tagrank.models.base import Factor
from tagrank.models.listwise import Annotators, ListwiseTagger, Loss


class LabelQueryDecoder(ListwiseTagger):
    def __init__(self, num_tags: int, backbone: str = "efficientnet_lite0", grid: PositiveInt = 4,
                 d_model: PositiveInt = 256, heads: PositiveInt = 4, layers: PositiveInt = 1,
                 dropout: Fraction = 0.1, loss: Loss = "both", lr: PositiveFloat = 4e-4,
                 betas: tuple[float, float] = (0.8, 0.999), eps: PositiveFloat = 1e-8, lr_factor: Factor = 0.5,
                 lr_patience: NonNegativeInt = 2, finetune_after_steps: NonNegativeInt = 7500,
                 finetune_lr: PositiveFloat = 1e-5, finetune_weight_decay: NonNegativeFloat = 1e-3,
                 top_k: PositiveInt = 10, relevance: Relevance = "linear",
                 annotators: Annotators = "merged") -> None:
        super().__init__(num_tags, backbone, top_k, relevance)
        self.save_hyperparameters()
        self.feature_grid = grid
        self.proj = nn.Linear(self.backbone.map_dim, d_model)
        self.position = nn.Parameter(torch.randn(grid * grid, d_model) * 0.02)
        self.queries = nn.Parameter(torch.randn(num_tags, d_model) * 0.02)
        layer = nn.TransformerDecoderLayer(d_model, heads, 4 * d_model, dropout, batch_first=True)
        self.decoder = nn.TransformerDecoder(layer, layers)
        self.read_out = nn.Parameter(torch.randn(num_tags, d_model) * d_model ** -0.5)
        self.read_bias = nn.Parameter(torch.zeros(num_tags))

    def forward(self, fmap: torch.Tensor) -> torch.Tensor:
        """Tag scores [B, V] for feature maps [B, C, g, g] (float16 from the cache is computed in float32)."""
        cells = self.proj(fmap.float().flatten(2).transpose(1, 2)) + self.position  # [B, g*g, d]
        out = self.decoder(self.queries.expand(cells.shape[0], -1, -1), cells)  # [B, V, d]
        return (out * self.read_out).sum(-1) + self.read_bias
