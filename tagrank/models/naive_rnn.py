"""The paper's "Naive-RNN" baseline: a captioning-style LSTM (Fig. 2, bottom) that emits one tag per step.

The image enters only once: the first step's input is the projected image feature plus the embedding of
a START token, x_0 = W_I CNN(I) + b_I + E[START]; every later step takes the embedding of the previous
tag, x_t = E[y_{t-1}] (the ground-truth tag in training: teacher forcing; the tag just emitted when
decoding). z_t = W h_t + b, softmax over the tags, the loss is the summed cross-entropy of the
ground-truth list (as for the paper's LSTM). Hidden size, projection size, dropout, optimiser, schedule
and staged fine-tuning are the same as :class:`~tagrank.models.lstm.LSTMTagger`. Two decodings:

- ``decoding=masked`` (``model=naive_rnn``, "Naive-RNN + masking"): greedy, the best tag not yet emitted
  at each step, fed back as the next input; always ``top_k`` distinct tags. Trained on the list alone.
- ``decoding=captioning`` (``model=naive_rnn_captioning``, the paper's captioning model): an END token
  follows each ground-truth list in training (an extra output class, so the softmax is over V + 1);
  decoding is greedy with no masking until END or ``top_k`` steps, as a caption decoder does. It may
  repeat a tag or stop early, which is what the paper's Naive-RNN numbers suggest (its precision is below
  the SVM's). A list that stopped early is padded with -1, which the metrics score as misses; a repeated
  tag scores as a miss at its second occurrence. An image whose ground truth is empty trains END first.

The decoding is a plain hyperparameter saved in the checkpoint; a checkpoint from before it existed (no
END row) loads as ``masked``.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from tagrank.config import Fraction, NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt
from tagrank.metrics import Relevance
from tagrank.errors import TagrankError
from tagrank.models.base import Factor, StagedTagger, beam_distinct

Decoding = Literal["masked", "captioning"]


class NaiveRNN(StagedTagger):
    def __init__(self, num_tags: int, backbone: str = "efficientnet_lite0", proj_dim: PositiveInt = 100,
                 hidden_size: PositiveInt = 300, dropout: Fraction = 0.5, lr: PositiveFloat = 4e-4,
                 betas: tuple[float, float] = (0.8, 0.999), eps: PositiveFloat = 1e-8, lr_factor: Factor = 0.5,
                 lr_patience: NonNegativeInt = 2, finetune_after_steps: NonNegativeInt = 7500,
                 finetune_lr: PositiveFloat = 1e-5, finetune_weight_decay: NonNegativeFloat = 1e-3,
                 top_k: PositiveInt = 10, relevance: Relevance = "linear", decoding: Decoding = "masked",
                 beam_width: PositiveInt = 1) -> None:
        super().__init__(num_tags, backbone, top_k, relevance)
        if beam_width > 1 and decoding == "captioning":
            raise TagrankError(f"model.beam_width={beam_width}: beam search is for decoding=masked (distinct tags); "
                               "the captioning decoder is greedy")
        self.save_hyperparameters()
        self.captioning = decoding == "captioning"
        self.start = num_tags  # the START token's row in the embedding
        self.end = num_tags  # the END class's column in the output (captioning only; END is never an input)
        self.proj = nn.Linear(self.feature_dim, proj_dim)
        self.embed = nn.Embedding(num_tags + 1, proj_dim)
        self.lstm = nn.LSTM(proj_dim, hidden_size, batch_first=True)
        self.drop = nn.Dropout(dropout)
        self.out = nn.Linear(hidden_size, num_tags + self.captioning)

    def first_input(self, features: torch.Tensor) -> torch.Tensor:
        start = torch.full((features.shape[0],), self.start, dtype=torch.long, device=features.device)
        return self.proj(features) + self.embed(start)

    def forward(self, features: torch.Tensor, previous: torch.Tensor) -> torch.Tensor:
        """Teacher-forced logits [B, T, V (+1 END)]: step 0 sees the image and START, step t the tag
        ``previous[:, t-1]``.

        ``previous`` [B, T-1] are the ground-truth tags fed back (padding -1 is allowed: it only
        precedes padded targets, whose loss is ignored).
        """
        tags = self.embed(previous.clamp(min=0))
        x = torch.cat([self.first_input(features)[:, None], tags], dim=1)
        h, _ = self.lstm(self.drop(x))
        return self.out(self.drop(h))

    def with_end(self, target: torch.Tensor) -> torch.Tensor:
        """The ground-truth lists [B, L + 1] with END after each list's last tag."""
        out = nn.functional.pad(target, (0, 1), value=-1)
        out[torch.arange(len(target), device=target.device), (target >= 0).sum(-1)] = self.end
        return out

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        target = self.with_end(batch["target"]) if self.captioning else batch["target"]
        logits = self(self.image_features(batch), target[:, :-1])
        ce = nn.functional.cross_entropy(logits.flatten(0, 1), target.flatten(), ignore_index=-1, reduction="sum")
        return ce / len(target)

    def rank(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Greedy decoding [B, top_k]; captioning: tags may repeat, -1 after END; masked with
        ``beam_width`` > 1: beam search over distinct lists."""
        features = self.image_features(batch)
        if self.hparams.get("beam_width", 1) > 1:
            return self.beam(features)
        batch_size, steps = features.shape[0], min(self.top_k, self.num_tags)
        if self.captioning:
            steps = self.top_k  # repeats allowed: a caption can be longer than the vocabulary
        rows = torch.arange(batch_size, device=features.device)
        used = torch.zeros(batch_size, self.out.out_features, dtype=torch.bool, device=features.device)
        out = torch.full((batch_size, steps), -1, dtype=torch.long, device=features.device)
        ended = torch.zeros(batch_size, dtype=torch.bool, device=features.device)
        x, state = self.first_input(features), None
        for t in range(steps):
            h, state = self.lstm(self.drop(x)[:, None], state)
            logits = self.out(self.drop(h[:, 0]))
            if self.captioning:
                pick = logits.argmax(-1)
                ended = ended | (pick == self.end)  # not in place: ONNX has no in-place or
                if not torch.jit.is_tracing() and ended.all():  # traced (tagrank-export): no early stop
                    break
                out[:, t] = pick.masked_fill(ended, -1)
            else:
                pick = logits.masked_fill(used, float("-inf")).argmax(-1)
                out[:, t] = pick
                used[rows, pick] = True
            x = self.embed(pick.clamp(max=self.num_tags - 1))  # a finished list's input no longer matters
        return out

    def predicted_set(self, batch: dict[str, torch.Tensor], preds: torch.Tensor) -> torch.Tensor | None:
        """The captioning decoder's list up to END is its own set (set metrics in the test table)."""
        return preds if self.captioning else None

    def stop_rule(self) -> str | None:
        return "the tags before its END tag" if self.captioning else None

    def beam(self, features: torch.Tensor) -> torch.Tensor:
        """Beam search over lists of distinct tags, each beam feeding back its own previous tag."""
        hidden = self.lstm.hidden_size

        def step(t: int, state: tuple[torch.Tensor, ...], previous: torch.Tensor | None):
            x, h, c = state
            if previous is not None:
                x = self.embed(previous)
            out, (h, c) = self.lstm(self.drop(x)[:, None], (h[None], c[None]))
            return self.out(self.drop(out[:, 0])), (x, h[0], c[0])

        zeros = features.new_zeros(features.shape[0], hidden)
        state = (self.first_input(features), zeros, zeros)
        return beam_distinct(step, state, min(self.top_k, self.num_tags), self.hparams.beam_width)

    def tag_scores(self, features: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """The softmax probability of the tag at its step, given the tags before it. Over all outputs, END
        included; computed by one teacher-forced pass on the decoded list (the steps after a captioning
        list ended are not used)."""
        logits = self(features, ids[:, :-1].clamp(min=0))
        return logits.softmax(-1).gather(-1, ids.clamp(min=0)[..., None])[..., 0]
