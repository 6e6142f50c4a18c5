"""A label-query decoder (Query2Label / ML-Decoder style) over the backbone's spatial feature map.

The last feature map, pooled to ``grid`` x ``grid`` cells (cached as float16 like the pooled features),
is projected to ``d_model`` and given a learned position per cell; one learned query per tag attends
over those cells through ``layers`` decoder layers, and a per-tag linear read-out gives one score per
tag. Why: the pooled vector every other method reads throws away where things are, while people name
what is large and central first; each tag's query can look at the cells where its evidence lies.
Trained with the scorer's listwise losses (``loss``, ``annotators``), ranked and scored as the scorer is
(softmax probabilities): all of it from :class:`~tagrank.models.listwise.ListwiseTagger`; the paper's
training recipe (:class:`StagedTagger`).

Why the layers have no self-attention among the tag queries (``self_attention=False``, the default;
:class:`CrossAttentionLayer`): ML-Decoder (Ridnik et al. 2021, "ML-Decoder: Scalable and Versatile
Classification Head") drops it from Query2Label's decoder layer, as the part whose cost grows with the
square of the number of queries, keeping each query's cross-attention over the map and its
feed-forward. With Flickr8k's 451 tags ``nn.TransformerDecoderLayer`` (``self_attention=True``, kept
for comparison) made a training step 2.3-2.4x dearer: 1.6-2.2 s against 0.7-0.9 s (``make bench
ARGS="--only label_query"``, docs/speed.md: the step alone, one thread, the 2 cores loaded by other runs,
load average 3.8-5). In the Flickr8k training run of results/flickr8k/spatial.md (OMP_NUM_THREADS=1 runs,
two at most beside each other, the machine loaded by that earlier session's other work) its steps took
~4 s each, too slow for the 3000-step schedule. Without it a tag's score depends on its own query and
the image alone, never on the other tags' queries (tests/test_label_query.py).

``groups`` (ML-Decoder's group decoding; null, one query per tag, by default): ``groups`` queries,
query t mod ``groups`` reading out tag t by a linear map of its own per tag. What is left of the step's
cost is mostly the feed-forward, which runs once per query: at 100 groups for 451 tags the step is
about 4x cheaper again (same benchmark, same load), but tags of one group share one attention over the
cells, so whether that costs ranking quality is for val to say.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from tagrank.config import Fraction, NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt
from tagrank.errors import TagrankError
from tagrank.metrics import Relevance
from tagrank.models.base import Factor
from tagrank.models.listwise import Annotators, ListwiseTagger, Loss
from tagrank.models.lstm import dropout as rand_dropout


class CrossAttentionLayer(nn.Module):
    """A Transformer decoder layer without the self-attention among the queries (ML-Decoder's): each
    query attends over the cells, then a feed-forward; each sub-layer with a residual and a LayerNorm
    after it (post-norm, as ``nn.TransformerDecoderLayer``'s default). Each query's output depends on
    that query and the cells alone."""

    def __init__(self, d_model: int, heads: int, feedforward: int, dropout: float) -> None:
        super().__init__()
        self.cross_attn = nn.MultiheadAttention(d_model, heads, dropout=dropout, batch_first=True)
        self.norm1 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, feedforward)
        self.linear2 = nn.Linear(feedforward, d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.p = dropout

    def forward(self, queries: torch.Tensor, cells: torch.Tensor) -> torch.Tensor:
        """[B, Q, d] queries over [B, N, d] cells -> [B, Q, d]."""
        # Dropout with masks from torch.rand (tagrank.models.lstm.dropout): nn.Dropout's bernoulli_ was
        # 15% of the step, on the [B, V, 4 d] feed-forward activations mostly.
        attended = self.cross_attn(queries, cells, cells, need_weights=False)[0]
        x = self.norm1(queries + rand_dropout(attended, self.p, self.training))
        hidden = rand_dropout(torch.relu(self.linear1(x)), self.p, self.training)
        return self.norm2(x + rand_dropout(self.linear2(hidden), self.p, self.training))


class LabelQueryDecoder(ListwiseTagger):
    def __init__(self, num_tags: int, backbone: str = "efficientnet_lite0", grid: PositiveInt = 4,
                 d_model: PositiveInt = 256, heads: PositiveInt = 4, layers: PositiveInt = 1,
                 dropout: Fraction = 0.1, self_attention: bool = False, groups: PositiveInt | None = None,
                 loss: Loss = "both", lr: PositiveFloat = 4e-4,
                 betas: tuple[float, float] = (0.8, 0.999), eps: PositiveFloat = 1e-8, lr_factor: Factor = 0.5,
                 lr_patience: NonNegativeInt = 2, finetune_after_steps: NonNegativeInt = 7500,
                 finetune_lr: PositiveFloat = 1e-5, finetune_weight_decay: NonNegativeFloat = 1e-3,
                 top_k: PositiveInt = 10, relevance: Relevance = "linear",
                 annotators: Annotators = "merged") -> None:
        super().__init__(num_tags, backbone, top_k, relevance)
        if groups is not None and groups > num_tags:
            raise TagrankError(f"model.groups={groups} is more than the {num_tags} tags: at most one query per tag "
                               "(model.groups=null)")
        self.save_hyperparameters()
        self.feature_grid = grid
        queries = num_tags if groups is None else groups
        self.proj = nn.Linear(self.backbone.map_dim, d_model)
        self.position = nn.Parameter(torch.randn(grid * grid, d_model) * 0.02)
        self.queries = nn.Parameter(torch.randn(queries, d_model) * 0.02)
        if self_attention:  # the queries also attend to each other (Query2Label's layer)
            layer = nn.TransformerDecoderLayer(d_model, heads, 4 * d_model, dropout, batch_first=True)
            self.decoder = nn.TransformerDecoder(layer, layers)
        else:
            self.decoder = nn.ModuleList(CrossAttentionLayer(d_model, heads, 4 * d_model, dropout)
                                         for _ in range(layers))
        # Query t mod Q reads out tag t (with groups: round-robin, so every query has ceil(V/Q) or one
        # fewer tags; ML-Decoder's consecutive blocks would leave the last queries no tag at all, e.g. 9
        # of 100 for 451 tags). The outputs past V of the queries with one tag fewer are cut off.
        # Stored flat, row t reading out tag t (then the padding rows), so with groups=null it is [V, d] as in
        # every checkpoint written before groups existed; forward() views it as [per_query, Q, d].
        self.per_query = math.ceil(num_tags / queries)
        self.read_out = nn.Parameter(torch.randn(self.per_query * queries, d_model) * d_model ** -0.5)
        self.read_bias = nn.Parameter(torch.zeros(num_tags))

    def forward(self, fmap: torch.Tensor) -> torch.Tensor:
        """Tag scores [B, V] for feature maps [B, C, g, g] (float16 from the cache is computed in float32)."""
        cells = self.proj(fmap.float().flatten(2).transpose(1, 2)) + self.position  # [B, g*g, d]
        out = self.queries.expand(cells.shape[0], -1, -1)  # [B, Q, d]
        if isinstance(self.decoder, nn.TransformerDecoder):
            out = self.decoder(out, cells)
        else:
            for layer in self.decoder:
                out = layer(out, cells)
        read_out = self.read_out.view(self.per_query, out.shape[1], -1)  # [per_query, Q, d]: [j, q] is tag j*Q + q
        scores = (out.unsqueeze(1) * read_out).sum(-1)  # [B, per_query, Q]
        return scores.flatten(1)[:, :self.num_tags] + self.read_bias
