"""The paper's ranking metrics: NDCG@k and Precision@k for k = 1..K, and their means over k.

Definitions (for a predicted ranked list P and a ground-truth ordered list G of n distinct tags):

- relevance of a tag at ground-truth rank r (1-based): ``linear`` n - r + 1 (default), ``inverse_log``
  1 / log2(1 + r), ``binary`` 1; a tag not in G has relevance 0.
- DCG@k = sum_{p=1..min(k,|P|)} (2^rel(P_p) - 1) / log2(1 + p); IDCG@k is the DCG@k of G in its own
  order; NDCG@k = DCG@k / IDCG@k.
- Precision@k = |{P_1..P_k} ∩ G| / k.

A predicted list may be shorter than k (a captioning decoder that stopped; the batch form pads it with
-1) and may name a tag twice: the missing places and every repeat of a tag after its first occurrence
are misses (no gain, no hit), so a list cannot score a tag twice.

Images whose ground truth is empty (every tag fell out of the vocabulary) have no defined NDCG: they are
left out of the means and counted. The plain-list functions are the reference; the batch
:class:`RankingMetrics` is a torchmetrics ``Metric`` with sum states, so DDP reduces it exactly.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Hashable, Literal, get_args

import torch
from torchmetrics import Metric

Relevance = Literal["linear", "inverse_log", "binary"]
RELEVANCES = get_args(Relevance)


def relevance_of(rank: int, n: int, kind: str = "linear") -> float:
    """Relevance of the tag at 1-based ground-truth ``rank`` in a list of ``n`` tags."""
    if kind == "linear":
        return float(n - rank + 1)
    if kind == "inverse_log":
        return 1.0 / math.log2(1 + rank)
    if kind == "binary":
        return 1.0
    raise ValueError(f"relevance={kind!r} is unknown; expected one of {RELEVANCES}")


def _dcg(gains: Sequence[float], k: int) -> float:
    return sum((2.0**g - 1.0) / math.log2(1 + p) for p, g in enumerate(gains[:k], start=1))


def ndcg_at_k(predicted: Sequence[Hashable], truth: Sequence[Hashable], k: int, relevance: str = "linear") -> float:
    """NDCG@k of one predicted ranked list against one ground-truth ordered list of distinct tags; a
    repeated prediction gains nothing after its first occurrence."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if not truth:
        raise ValueError("NDCG is undefined for an empty ground truth")
    n = len(truth)
    rel = {tag: relevance_of(r, n, relevance) for r, tag in enumerate(truth, start=1)}
    seen: set = set()
    gains = []
    for tag in predicted[:k]:
        gains.append(0.0 if tag in seen else rel.get(tag, 0.0))
        seen.add(tag)
    dcg = _dcg(gains, k)
    return dcg / _dcg([rel[tag] for tag in truth], k)


def precision_at_k(predicted: Sequence[Hashable], truth: Sequence[Hashable], k: int) -> float:
    """Precision@k: the share of the first k places that hold a ground-truth tag (each tag counted once)."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    return len(set(predicted[:k]) & set(truth)) / k


class RankingMetrics(Metric):
    """NDCG@k and P@k for k = 1..``k_max`` over a stream of batches, and their means over k.

    ``update(preds, target)`` takes tag ids: ``preds`` [B, K] ranked predictions, ``target`` [B, L]
    ground-truth lists in order; both padded with negative ids. A repeated prediction is a miss after its
    first occurrence. ``compute()`` returns a dict with keys
    ``ndcg@k``, ``p@k``, ``ndcg_mean``, ``p_mean``, ``n_images`` (scored) and ``n_empty`` (left out).
    """

    full_state_update = False
    higher_is_better = True

    def __init__(self, k_max: int = 10, relevance: str = "linear", **kwargs) -> None:
        super().__init__(**kwargs)
        if relevance not in RELEVANCES:
            raise ValueError(f"relevance={relevance!r} is unknown; expected one of {RELEVANCES}")
        self.k_max = k_max
        self.relevance = relevance
        zeros = torch.zeros(k_max, dtype=torch.float64)
        self.add_state("ndcg_sum", default=zeros.clone(), dist_reduce_fx="sum")
        self.add_state("p_sum", default=zeros.clone(), dist_reduce_fx="sum")
        self.add_state("n_images", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("n_empty", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def _relevance(self, valid: torch.Tensor) -> torch.Tensor:
        """Relevance of each ground-truth position [B, L] (0 at padding)."""
        n = valid.sum(-1, keepdim=True).double()
        rank = torch.arange(1, valid.shape[1] + 1, device=valid.device, dtype=torch.float64).expand(valid.shape)
        if self.relevance == "linear":
            rel = n - rank + 1
        elif self.relevance == "inverse_log":
            rel = 1.0 / torch.log2(1 + rank)
        else:
            rel = torch.ones_like(rank)
        return rel * valid

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        k = self.k_max
        preds = preds[:, :k].long()
        if preds.shape[1] < k:  # fewer predictions than k: the missing ranks score nothing
            preds = torch.nn.functional.pad(preds, (0, k - preds.shape[1]), value=-1)
        valid = target >= 0
        nonempty = valid.any(-1)
        self.n_empty += (~nonempty).sum()
        preds, target, valid = preds[nonempty], target[nonempty], valid[nonempty]
        if preds.numel() == 0:
            return
        rel_truth = self._relevance(valid)  # [B, L]
        same = preds[:, :, None] == preds[:, None, :]  # [B, K, K]
        first = ~(same & torch.ones(k, k, dtype=torch.bool, device=preds.device).tril(-1)).any(-1)  # not seen before
        counted = (preds >= 0) & first  # a real tag, at its first occurrence
        match = (preds[:, :, None] == target[:, None, :]) & valid[:, None, :] & counted[:, :, None]
        rel_pred = (match.double() * rel_truth[:, None, :]).sum(-1)  # [B, K]
        discount = 1.0 / torch.log2(torch.arange(2, k + 2, device=preds.device, dtype=torch.float64))
        dcg = torch.cumsum((2.0**rel_pred - 1.0) * discount, dim=1)
        ideal = rel_truth[:, :k]
        if ideal.shape[1] < k:
            ideal = torch.nn.functional.pad(ideal, (0, k - ideal.shape[1]))
        idcg = torch.cumsum((2.0**ideal - 1.0) * discount, dim=1)
        hits = torch.cumsum(match.any(-1).double(), dim=1)
        self.ndcg_sum += (dcg / idcg).sum(0)
        self.p_sum += (hits / torch.arange(1, k + 1, device=preds.device, dtype=torch.float64)).sum(0)
        self.n_images += preds.shape[0]

    def compute(self) -> dict[str, torch.Tensor]:
        n = self.n_images.clamp(min=1).double()
        ndcg, prec = self.ndcg_sum / n, self.p_sum / n
        out = {f"ndcg@{k}": ndcg[k - 1] for k in range(1, self.k_max + 1)}
        out.update({f"p@{k}": prec[k - 1] for k in range(1, self.k_max + 1)})
        out["ndcg_mean"], out["p_mean"] = ndcg.mean(), prec.mean()
        out["n_images"], out["n_empty"] = self.n_images.double(), self.n_empty.double()
        return out


def format_table(metrics: dict[str, float], k_max: int = 10, title: str = "") -> str:
    """The paper's Table 1 layout for one run: NDCG@k and P@k for each k, then the mean over k."""
    head = "metric | " + " | ".join(f"@{k}" for k in range(1, k_max + 1)) + " | mean"
    rows = [head, "-" * len(head)]
    for name in ("ndcg", "p"):
        cells = [f"{float(metrics[f'{name}@{k}']):.4f}" for k in range(1, k_max + 1)]
        rows.append(f"{name.upper():<6} | " + " | ".join(cells) + f" | {float(metrics[f'{name}_mean']):.4f}")
    extra = ""
    if "n_images" in metrics:
        extra = f"\n{int(metrics['n_images'])} images scored, {int(metrics.get('n_empty', 0))} left out (empty ground truth)"
    return (f"{title}\n" if title else "") + "\n".join(rows) + extra
