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


def first_occurrences(preds: torch.Tensor) -> torch.Tensor:
    """[B, K] True where ``preds`` holds a real tag (>= 0) not already named earlier in its list: the
    places that can score (a repeat is a miss)."""
    same = preds[:, :, None] == preds[:, None, :]  # [B, K, K]
    earlier = torch.ones_like(same[0]).tril(-1)
    return (preds >= 0) & ~(same & earlier).any(-1)


def relevance_grades(valid: torch.Tensor, kind: str = "linear") -> torch.Tensor:
    """Relevance of each ground-truth position [B, L] of lists whose real entries are ``valid`` (0 at
    padding), as :func:`relevance_of` defines it."""
    n = valid.sum(-1, keepdim=True).double()
    rank = torch.arange(1, valid.shape[1] + 1, device=valid.device, dtype=torch.float64).expand(valid.shape)
    if kind == "linear":
        rel = n - rank + 1
    elif kind == "inverse_log":
        rel = 1.0 / torch.log2(1 + rank)
    else:
        rel = torch.ones_like(rank)
    return rel * valid


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
        return relevance_grades(valid, self.relevance)

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
        counted = first_occurrences(preds)
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


class SetMetrics(Metric):
    """Set precision, recall and F1 of the tags a method names when it decides itself how many (a stop
    rule), each averaged over images (example-based), and the mean number of tags named.

    ``update(preds, target)``: ``preds`` [B, K] the named tags (-1 padded; a repeat counts once),
    ``target`` [B, L] the ground-truth lists (-1 padded). Per image P = hits / named (0 when it names
    none), R = hits / |truth|, F1 their harmonic mean (0 without a hit). Images with an empty ground
    truth are left out, as for the ranking metrics.
    """

    full_state_update = False
    higher_is_better = True

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        for name in ("precision", "recall", "f1", "size"):
            self.add_state(f"{name}_sum", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("n_images", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        keep = (target >= 0).any(-1)
        preds, target = preds[keep].long(), target[keep]
        named = first_occurrences(preds)
        hits = (((preds[:, :, None] == target[:, None, :]) & (target >= 0)[:, None, :]).any(-1) & named).sum(-1).double()
        size, truth = named.sum(-1).double(), (target >= 0).sum(-1).double()
        precision, recall = hits / size.clamp(min=1), hits / truth
        f1 = torch.where(hits > 0, 2 * precision * recall / (precision + recall).clamp(min=1e-12), 0.0)
        self.precision_sum += precision.sum()
        self.recall_sum += recall.sum()
        self.f1_sum += f1.sum()
        self.size_sum += size.sum()
        self.n_images += len(preds)

    def compute(self) -> dict[str, torch.Tensor]:
        n = self.n_images.clamp(min=1).double()
        return {"set_precision": self.precision_sum / n, "set_recall": self.recall_sum / n, "set_f1": self.f1_sum / n,
                "set_size": self.size_sum / n}


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
    if "set_f1" in metrics:
        extra += (f"\nits own stop rule: set precision {float(metrics['set_precision']):.4f}, recall "
                  f"{float(metrics['set_recall']):.4f}, F1 {float(metrics['set_f1']):.4f} "
                  f"({float(metrics['set_size']):.2f} tags an image)")
    return (f"{title}\n" if title else "") + "\n".join(rows) + extra
