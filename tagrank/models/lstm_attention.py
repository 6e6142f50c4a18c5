"""The paper's LSTM with soft attention over the backbone's spatial feature map (Show, Attend and Tell).

The paper's LSTM (:mod:`tagrank.models.lstm`) reads one pooled vector at every step, so each tag it names
comes from the same evidence. People name what is large and central first, then look elsewhere: here
each step chooses where to look. The last feature map, pooled to ``grid`` x ``grid`` cells (the float16
cache that ``model=label_query`` reads), is projected cell by cell to ``proj_dim`` (plus a learned
position per cell); at step t additive attention conditioned on the hidden state h_{t-1},

    e_ti = w^T tanh(W_a a_i + W_h h_{t-1}),   alpha_t = softmax_i(e_t),   z_t = sum_i alpha_ti a_i,

gives the context z_t, and the LSTM's input at step t is [v, z_t] with v = W_I pool(map) + b_I the
paper's image vector (``pooled_input=false``: z_t alone). Everything else is the paper's LSTM: no
previous-tag input, z_t = W h_t + b and a softmax over the V tags at each step, the summed
cross-entropy of the ground-truth list (Eq. 19; ``loss=plackett_luce`` as in ``model=lstm``), the
staged schedule (:class:`StagedTagger`), and decoding of distinct tags (greedy, or beam search).

Why ``pool(map)`` is the mean of the cells: the EfficientNet-Lite pooled feature is the mean of its
last map, and where the map already has ``grid`` x ``grid`` cells (Lite at 128 px, grid 4) the mean of
the cells is exactly that feature; so the model needs only the map cache, not the pooled one too.
"""

from __future__ import annotations

import torch
from torch import nn

from tagrank.config import Fraction, NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt
from tagrank.metrics import Relevance
from tagrank.models.base import Factor, list_lengths, plackett_luce_nll
from tagrank.models.lstm import Loss, StepwiseTagger, dropout


# rank and tag_scores as the paper's LSTM: the attention follows the hidden state alone, not the tags chosen
class LSTMAttention(StepwiseTagger):
    def __init__(self, num_tags: int, backbone: str = "efficientnet_lite0", grid: PositiveInt = 4,
                 proj_dim: PositiveInt = 100, hidden_size: PositiveInt = 300, attention_dim: PositiveInt = 100,
                 pooled_input: bool = True, dropout: Fraction = 0.5, lr: PositiveFloat = 4e-4,
                 betas: tuple[float, float] = (0.8, 0.999), eps: PositiveFloat = 1e-8, lr_factor: Factor = 0.5,
                 lr_patience: NonNegativeInt = 2, finetune_after_steps: NonNegativeInt = 7500,
                 finetune_lr: PositiveFloat = 1e-5, finetune_weight_decay: NonNegativeFloat = 1e-3,
                 top_k: PositiveInt = 10, relevance: Relevance = "linear", loss: Loss = "cross_entropy",
                 beam_width: PositiveInt = 1) -> None:
        super().__init__(num_tags, backbone, top_k, relevance)
        self.save_hyperparameters()
        self.feature_grid = grid
        channels = self.backbone.map_dim
        self.proj = nn.Linear(channels, proj_dim)  # W_I, b_I: the paper's image vector v
        self.cell_proj = nn.Linear(channels, proj_dim)  # a_i: what a step can attend to
        # A learned position per cell (as model=label_query's): attention over content alone cannot
        # prefer the centre of the photo, which is where people look first.
        self.position = nn.Parameter(torch.randn(grid * grid, proj_dim) * 0.02)
        self.att_cells = nn.Linear(proj_dim, attention_dim, bias=False)  # W_a
        self.att_hidden = nn.Linear(hidden_size, attention_dim)  # W_h (and the attention's bias)
        self.att_score = nn.Linear(attention_dim, 1, bias=False)  # w
        self.cell = nn.LSTMCell(proj_dim * (2 if pooled_input else 1), hidden_size)
        self.drop = nn.Dropout(dropout)
        self.out = nn.Linear(hidden_size, num_tags)

    def forward(self, fmap: torch.Tensor, steps: int, attention: list[torch.Tensor] | None = None) -> torch.Tensor:
        """Per-step tag logits [B, steps, V] for feature maps [B, C, g, g] (float16 from the cache is
        computed in float32). ``attention``, if given, receives each step's weights over the cells [B, g*g]."""
        with torch.autocast(fmap.device.type, enabled=False):  # a small recurrence: float32 under autocast too
            cells = fmap.float().flatten(2).transpose(1, 2)  # [B, g*g, C]
            p = self.drop.p
            a = dropout(self.cell_proj(cells) + self.position, p, self.training)  # one mask for all steps, as the image is one
            keys = self.att_cells(a)  # W_a a_i: the same at every step
            v = dropout(self.proj(cells.mean(1)), p, self.training) if self.hparams.pooled_input else None
            h = c = a.new_zeros(a.shape[0], self.cell.hidden_size)
            hs = []
            for _ in range(steps):
                scores = self.att_score(torch.tanh(keys + self.att_hidden(h)[:, None]))[..., 0]  # [B, g*g]
                alpha = scores.softmax(-1)
                if attention is not None:
                    attention.append(alpha)
                context = (alpha[..., None] * a).sum(1)  # z_t [B, d]
                h, c = self.cell(context if v is None else torch.cat([v, context], -1), (h, c))
                hs.append(h)
            return self.out(dropout(torch.stack(hs, 1), p, self.training))

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        target, lengths = batch["target"], list_lengths(batch)
        fmap = self.image_features(batch)
        steps = max(1, min(target.shape[1], max(lengths, default=0)))  # a list that has ended costs no step
        logits = self(fmap, steps)
        target = target[:, :steps]
        if self.hparams.loss == "plackett_luce":
            return plackett_luce_nll(logits, target) / len(target)
        # The paper's Eq. 19: the cross-entropy of each ground-truth tag at its step, summed over the list
        # (padding ignored), averaged over the batch. No tag in the batch: a zero loss with a gradient.
        return nn.functional.cross_entropy(logits.flatten(0, 1), target.flatten(), ignore_index=-1,
                                           reduction="sum") / len(target)
