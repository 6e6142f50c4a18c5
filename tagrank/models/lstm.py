"""The paper's method ("Ours"): an LSTM that reads the image at every step and emits one tag per step.

v = W_I CNN(I) + b_I (d = ``proj_dim``); the LSTM's gates take v at every time step together with
h_{t-1} (no previous-tag input, unlike captioning); z_t = W h_t + b; softmax over the V tags. The loss is
the cross-entropy of the ground-truth tag at each step, summed over the list (Eq. 19) and averaged over
the batch. Decoding emits the ``top_k`` steps' best tags, skipping tags already emitted (``beam_width``
> 1: the beam search for the distinct list of highest probability). ``loss=plackett_luce`` trains each
step's softmax over the tags not yet in the ground-truth list instead (the Plackett-Luce likelihood).

The LSTM is ``nn.LSTM``'s (same gates, same parameters ``lstm.weight_ih_l0`` ...: checkpoints of
either form load into the other), run by :class:`RepeatedInputLSTM`, which uses that the input is the
same at every step.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from tagrank.config import Fraction, NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt
from tagrank.metrics import Relevance
from tagrank.models.base import Factor, StagedTagger, beam_distinct, greedy_distinct, list_lengths, plackett_luce_nll


class RepeatedInputLSTM(torch.autograd.Function):
    """``nn.LSTM`` (one layer, zero initial state) whose input is ``v`` at every step, over a packed batch:
    step t runs the first ``batch_sizes[t]`` rows of ``v`` (rows sorted by list length, longest first;
    ``batch_sizes`` non-increasing, as ``nn.utils.rnn.PackedSequence``'s), and the result is the hidden
    states in ``PackedSequence.data``'s layout, [sum(batch_sizes), H], time-major.

    Why not ``nn.LSTM`` on ``v`` repeated: its input projection W_ih v + b is then computed (and
    differentiated) at every step, and its CPU kernel (oneDNN) is slow at this size (batch 16, hidden
    300; backward twice the forward). Here the projection is computed once, the recurrence in plain
    matrix products, and the backward pass by hand: the projection's gradient is the steps' summed,
    and W_hh's one product over all steps. Packed, a list that has ended costs no more steps (a
    training batch's lists are half as long on average as its longest). Same maths as ``nn.LSTM``
    (gate order i, f, g, o); ``tests/test_speed.py`` checks values and gradients against it in float64.
    """

    @staticmethod
    def forward(ctx, v: torch.Tensor, w_ih: torch.Tensor, w_hh: torch.Tensor, b_ih: torch.Tensor,
                b_hh: torch.Tensor, batch_sizes: tuple[int, ...]) -> torch.Tensor:
        hidden = w_hh.shape[1]
        starts = [0]
        for n in batch_sizes:
            starts.append(starts[-1] + n)
        x = torch.addmm(b_ih + b_hh, v, w_ih.t())  # [B, 4H], the same at every step
        gates = v.new_empty(starts[-1], 4 * hidden)  # activated i, f, g, o
        cells, tanh_cells, hs = (v.new_empty(starts[-1], hidden) for _ in range(3))
        for t, m in enumerate(batch_sizes):
            now = slice(starts[t], starts[t] + m)
            before = slice(starts[t - 1], starts[t - 1] + m)  # the same rows one step earlier
            pre = x[:m] if t == 0 else torch.addmm(x[:m], hs[before], w_hh.t())
            gate = gates[now]
            torch.sigmoid(pre, out=gate)
            torch.tanh(pre[:, 2 * hidden:3 * hidden], out=gate[:, 2 * hidden:3 * hidden])
            i, f, g, o = gate.chunk(4, dim=1)
            torch.mul(i, g, out=cells[now])
            if t > 0:
                cells[now].addcmul_(f, cells[before])
            torch.tanh(cells[now], out=tanh_cells[now])
            torch.mul(o, tanh_cells[now], out=hs[now])
        ctx.batch_sizes, ctx.starts = batch_sizes, starts
        ctx.save_for_backward(v, w_ih, w_hh, gates, cells, tanh_cells, hs)
        return hs

    @staticmethod
    def backward(ctx, grad_hs: torch.Tensor):
        v, w_ih, w_hh, gates, cells, tanh_cells, hs = ctx.saved_tensors
        sizes, starts, hidden = ctx.batch_sizes, ctx.starts, hs.shape[1]
        # Each packed row's row one step earlier (steps >= 1), and each packed row's batch row.
        earlier = torch.cat([torch.arange(starts[t - 1], starts[t - 1] + n) for t, n in enumerate(sizes) if t > 0]
                            or [torch.zeros(0, dtype=torch.long)]).to(v.device)
        rows = torch.cat([torch.arange(n) for n in sizes]).to(v.device)
        i, f, g, o = gates.split(hidden, dim=1)
        previous = torch.cat([cells.new_zeros(sizes[0], hidden), cells[earlier]])
        # Factors that do not depend on the recursion, for all steps at once.
        from_h = o * (1 - tanh_cells * tanh_cells)  # h_t's share of d loss / d c_t
        to_ifg = torch.cat([g * i * (1 - i), previous * f * (1 - f), i * (1 - g * g)], dim=1)
        to_o = tanh_cells * o * (1 - o)
        grad_pre = gates.new_empty(gates.shape)  # d loss / d gate pre-activations, per packed row
        grad_h = grad_c = None  # from the step after, on its (fewer) rows
        for t in reversed(range(len(sizes))):
            m = sizes[t]
            now = slice(starts[t], starts[t] + m)
            dh = grad_hs[now] if grad_h is None else _plus_prefix(grad_hs[now], grad_h)
            dc = dh * from_h[now] if grad_c is None else _plus_prefix(dh * from_h[now], grad_c)
            torch.mul(dc.unsqueeze(1), to_ifg[now].view(m, 3, hidden),
                      out=grad_pre[now, :3 * hidden].view(m, 3, hidden))
            torch.mul(dh, to_o[now], out=grad_pre[now, 3 * hidden:])
            grad_c = dc * f[now]
            if t > 0:
                grad_h = grad_pre[now] @ w_hh
        grad_x = grad_pre.new_zeros(len(v), 4 * hidden).index_add_(0, rows, grad_pre)  # the input's share of every step
        grad_b = grad_x.sum(0)
        grad_w_hh = grad_pre[sizes[0]:].t() @ hs[earlier]
        return grad_x @ w_ih, grad_x.t() @ v, grad_w_hh, grad_b, grad_b, None


def _plus_prefix(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a + b where b holds the first len(b) of a's rows (the rows whose list goes on one more step)."""
    if len(b) == len(a):
        return a + b
    out = a.clone()
    out[:len(b)] += b
    return out


def dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """``nn.functional.dropout``, with the mask drawn by ``torch.rand`` (uniform < 1 - p), which on a CPU is
    ~4x faster than the ``bernoulli_`` that ``nn.Dropout`` uses (a tenth of a head training step)."""
    if not training or p == 0:
        return x
    keep = torch.rand_like(x) >= p
    return x * keep.to(x.dtype).mul_(1 / (1 - p))


# cross_entropy: the paper's (a softmax over all V tags at every step); plackett_luce: each step's softmax
# over the tags not yet in the ground-truth list (the exact likelihood of the order; see plackett_luce_nll).
Loss = Literal["cross_entropy", "plackett_luce"]


class StepwiseTagger(StagedTagger):
    """A tagger whose ``forward(features, steps)`` gives one row of tag logits a step, none of them depending
    on the tags chosen before (no previous-tag input: the paper's LSTM and its attention variant), so
    ranking and scoring are the same for both: greedy or beam decoding of distinct tags over those rows."""

    def rank(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        logits = self(self.image_features(batch), self.top_k)
        width = self.hparams.get("beam_width", 1)
        if width == 1:
            return greedy_distinct(logits)
        # Each step's logits do not depend on the tags chosen before (no previous-tag input): the state
        # only carries each beam's image row.
        steps = min(self.top_k, self.num_tags)
        return beam_distinct(lambda t, state, previous: (state[0][:, t], state), (logits,), steps, width)

    def tag_scores(self, features: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """The softmax probability of the tag at its step. Over all tags: the masking of tags already
        emitted is decoding, not the model."""
        return self(features, ids.shape[1]).softmax(-1).gather(-1, ids.clamp(min=0)[..., None])[..., 0]


class LSTMTagger(StepwiseTagger):
    def __init__(self, num_tags: int, backbone: str = "efficientnet_lite0", proj_dim: PositiveInt = 100,
                 hidden_size: PositiveInt = 300, dropout: Fraction = 0.5, lr: PositiveFloat = 4e-4,
                 betas: tuple[float, float] = (0.8, 0.999), eps: PositiveFloat = 1e-8, lr_factor: Factor = 0.5,
                 lr_patience: NonNegativeInt = 2, finetune_after_steps: NonNegativeInt = 7500,
                 finetune_lr: PositiveFloat = 1e-5, finetune_weight_decay: NonNegativeFloat = 1e-3,
                 top_k: PositiveInt = 10, relevance: Relevance = "linear", loss: Loss = "cross_entropy",
                 beam_width: PositiveInt = 1) -> None:
        super().__init__(num_tags, backbone, top_k, relevance)
        self.save_hyperparameters()
        self.proj = nn.Linear(self.feature_dim, proj_dim)
        self.lstm = nn.LSTM(proj_dim, hidden_size, batch_first=True)  # its parameters; run by RepeatedInputLSTM
        self.drop = nn.Dropout(dropout)
        self.out = nn.Linear(hidden_size, num_tags)

    def forward(self, features: torch.Tensor, steps: int, lengths: list[int] | None = None) -> torch.Tensor:
        """Per-step tag logits [B, steps, V] for image features [B, D]. With ``lengths`` (of the batch's
        ground-truth lists) the LSTM stops after the longest: a step depends only on those before it,
        so the logits of the steps run are the same; the ones after are those of h = 0."""
        run = steps if lengths is None else max(1, min(steps, max(lengths)))
        v = dropout(self.proj(features), self.drop.p, self.training)
        if torch.jit.is_tracing():  # tagrank-export: nn.LSTM's own op (same maths), which ONNX and TorchScript know
            h = self.lstm(v[:, None].expand(-1, run, -1))[0]
        else:
            h = self._run_lstm(v, (len(v),) * run).view(run, len(v), -1).transpose(0, 1)
        if run < steps:
            h = nn.functional.pad(h, (0, 0, 0, steps - run))
        return self.out(dropout(h, self.drop.p, self.training))

    def _run_lstm(self, v: torch.Tensor, batch_sizes: tuple[int, ...]) -> torch.Tensor:
        lstm = self.lstm
        with torch.autocast(v.device.type, enabled=False):  # a small recurrence: float32 under bf16 autocast too
            return RepeatedInputLSTM.apply(v.to(lstm.weight_ih_l0.dtype), lstm.weight_ih_l0, lstm.weight_hh_l0,
                                           lstm.bias_ih_l0, lstm.bias_hh_l0, batch_sizes)

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        target, lengths = batch["target"], list_lengths(batch)
        features = self.image_features(batch)
        if self.hparams.get("loss", "cross_entropy") == "plackett_luce":
            return plackett_luce_nll(self(features, target.shape[1], lengths), target) / len(target)
        # The paper's loss reads each list's own steps only: the lists packed longest first, each step
        # run on the rows whose list goes on (the padded steps of the others cost nothing).
        order = sorted((r for r, n in enumerate(lengths) if n > 0), key=lambda r: -lengths[r])
        if not order:  # no tag in the batch: a zero loss that still has a gradient
            return self(features, 1).sum() * 0
        index = torch.tensor(order, device=target.device)
        packed = nn.utils.rnn.pack_padded_sequence(target[index], [lengths[r] for r in order], batch_first=True)
        v = dropout(self.proj(features[index]), self.drop.p, self.training)
        h = self._run_lstm(v, tuple(packed.batch_sizes.tolist()))
        logits = self.out(dropout(h, self.drop.p, self.training))
        return nn.functional.cross_entropy(logits, packed.data, reduction="sum") / len(target)

