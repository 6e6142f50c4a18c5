"""What the methods that score every tag once share: the listwise losses, ranking by score, and the
learning from every annotator's own list.

``ListwiseScorer`` (a head on the pooled vector) and ``LabelQueryDecoder`` (label queries over the
feature map) differ only in ``forward`` (image features -> one score per tag, [B, V]); how such scores
are learnt, ranked and scored lives here once, in :class:`ListwiseTagger`.

The losses (``loss``), each a function of the scores [N, V] and a ranked list [N, L] (-1 padded) giving
one value per list; the tags not in the list have relevance 0, the others the grade of their place in
it under the model's ``relevance`` (:func:`tagrank.metrics.relevance_grades`), whose NDCG gain is
2^rel - 1, as the metric's:

- ``plackett_luce``: the likelihood of the list's order (ListMLE; :func:`plackett_luce_rows`).
- ``listnet``: cross-entropy of softmax(scores) against the normalised gains (:func:`listnet_rows`).
- ``both``: their sum (the default since the scorer was added).
- ``lambdaloss``: LambdaLoss's NDCG-Loss2++ (Wang et al. 2018, "The LambdaLoss Framework for Ranking
  Metric Optimization"), a pairwise logistic loss whose pair weights bound NDCG (:func:`lambdaloss_rows`).
- ``neuralndcg``: NeuralNDCG (Pobrotyn & Bialobrzeski 2021, arXiv:2102.07831), NDCG with the sort
  relaxed by NeuralSort and Sinkhorn scaling (:func:`neuralndcg_rows`).

Why the last two: allRank's comparisons on web-search data put them 1-2 NDCG@5 points above ListNet
and ListMLE; whether that carries over to tags is measured in results/flickr8k/ablation_losses.md.

``annotators``: ``merged`` learns from the merged list only (``target``); ``each`` averages the loss over
each annotator's own ranked list (``lists`` in the batch, [B, A, L]; a data set with one list per image
delivers the merged list there), so a tag that one person names first and another never is learnt as
such, instead of through the mean-rank merge that smooths the five people into one order.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import nn

from tagrank.metrics import relevance_grades
from tagrank.models.base import StagedTagger

Loss = Literal["plackett_luce", "listnet", "both", "lambdaloss", "neuralndcg"]
Annotators = Literal["merged", "each"]

EPS = 1e-10  # allRank's DEFAULT_EPS: keeps divisions by an empty list's ideal DCG finite


def list_gains(target: torch.Tensor, num_tags: int, relevance: str) -> torch.Tensor:
    """The NDCG gain 2^rel - 1 of every tag [N, V] (float64) for ranked lists [N, L] (-1 padded): the
    grade of its place in the list (``relevance``), 0 for a tag not in it."""
    valid = target >= 0
    gains = (2.0 ** relevance_grades(valid, relevance) - 1.0) * valid
    return torch.zeros(len(target), num_tags, dtype=torch.float64, device=target.device).scatter_add_(
        1, target.clamp(min=0), gains)


def plackett_luce_rows(scores: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Each list's negative log-likelihood [N] under the Plackett-Luce model of ``scores`` [N, V]: the
    per-list form of :func:`tagrank.models.base.plackett_luce_nll` with the same scores at every step."""
    valid = target >= 0
    ids = target.clamp(min=0)
    named = nn.functional.one_hot(ids, scores.shape[-1]).bool() & valid[..., None]  # [N, L, V]
    before = (named.cumsum(1) - named.long()) > 0  # named at an earlier step
    logits = scores[:, None].expand(-1, target.shape[1], -1)
    nll = torch.logsumexp(logits.masked_fill(before, float("-inf")), -1) - scores.gather(1, ids)
    return (nll * valid).sum(1)


def listnet_rows(scores: torch.Tensor, target: torch.Tensor, relevance: str) -> torch.Tensor:
    """Each list's cross-entropy [N] between its normalised NDCG gains and softmax(scores) (ListNet's
    top-one probabilities); 0 for an empty list."""
    q = list_gains(target, scores.shape[-1], relevance)
    q = (q / q.sum(1, keepdim=True).clamp(min=1e-12)).to(scores.dtype)
    return -(q * scores.log_softmax(-1)).sum(1)


def lambdaloss_rows(scores: torch.Tensor, target: torch.Tensor, relevance: str, mu: float = 10.0,
                    sigma: float = 1.0) -> torch.Tensor:
    """LambdaLoss with the NDCG-Loss2++ weights [N], as allRank's ``lambdaLoss(weighing_scheme=
    "ndcgLoss2PP_scheme", mu=10, sigma=1, reduction="sum", reduction_log="binary", k=None)``
    (github.com/allegro/allRank, allrank/models/losses/lambdaLoss.py).

    For every pair of tags (i, j) with gain G_i > G_j (gains over the ideal DCG) and the places p_i,
    p_j they hold in the ranking by score (1 = first), the loss adds
    -w_ij log2 sigmoid(sigma (s_i - s_j)) with w_ij = (mu delta_ij + |1/D(p_i) - 1/D(p_j)|) |G_i - G_j|,
    D(r) = log2(1 + r) and delta_ij = |1/D(|p_i - p_j|) - 1/D(|p_i - p_j| + 1)|. The places come from
    sorting and carry no gradient. Only pairs with a listed tag i exist, so the work is [N, L, V], not
    allRank's [N, V, V] (the same sum: a pair of two unlisted tags has G_i = G_j = 0 and is skipped
    there too). allRank clamps sigmoid at 1e-10 before the log; logsigmoid is stable without it.
    """
    n, vocab = scores.shape
    valid = target >= 0
    ids = target.clamp(min=0)
    gain = list_gains(target, vocab, relevance)  # [N, V]
    discount = 1.0 / torch.log2(torch.arange(2, vocab + 2, device=scores.device, dtype=torch.float64))
    max_dcg = (gain.sort(1, descending=True).values * discount).sum(1).clamp(min=EPS)
    g = gain / max_dcg[:, None]
    order = scores.detach().argsort(1, descending=True)
    places = torch.arange(1, vocab + 1, device=scores.device).expand(n, -1)
    place = torch.empty_like(order).scatter_(1, order, places).double()  # [N, V]: each tag's place
    g_i, p_i = g.gather(1, ids), place.gather(1, ids)  # [N, L]
    dg = g_i[:, :, None] - g[:, None, :]  # [N, L, V]
    pair = valid[:, :, None] & (dg > 0)
    gap = (p_i[:, :, None] - place[:, None, :]).abs().clamp(min=1)  # >= 1 for distinct tags; 1 where no pair
    delta = (1 / torch.log2(1 + gap) - 1 / torch.log2(2 + gap)).abs()
    lambdarank = (1 / torch.log2(1 + p_i)[:, :, None] - 1 / torch.log2(1 + place)[:, None, :]).abs()
    weight = ((mu * delta + lambdarank) * dg.abs() * pair).to(scores.dtype)
    log2_p = nn.functional.logsigmoid(sigma * (scores.gather(1, ids)[:, :, None] - scores[:, None, :])) / math.log(2)
    return -(weight * log2_p).sum((1, 2))


def neural_sort(scores: torch.Tensor, tau: float = 1.0) -> torch.Tensor:
    """NeuralSort's relaxed permutation matrices [N, n, n] of scores [N, n] (Grover et al. 2019, as
    allRank's ``deterministic_neural_sort`` without padding): row r is a softmax over the items of
    ((n + 1 - 2r) s_j - sum_k |s_j - s_k|) / tau, which tends to the one-hot of the r-th largest score."""
    n = scores.shape[1]
    spread = (scores[:, :, None] - scores[:, None, :]).abs().sum(2)  # [N, n]
    scaling = n + 1 - 2 * torch.arange(1, n + 1, device=scores.device, dtype=scores.dtype)  # [n]
    return ((scaling[None, :, None] * scores[:, None, :] - spread[:, None, :]) / tau).softmax(-1)


def sinkhorn(mat: torch.Tensor, tol: float = 1e-6, max_iter: int = 50) -> torch.Tensor:
    """Alternate column and row normalisation of positive matrices [N, n, n] towards doubly stochastic
    ones (allRank's ``sinkhorn_scaling``: the same tolerance and iteration cap)."""
    for _ in range(max_iter):
        mat = mat / mat.sum(1, keepdim=True).clamp(min=EPS)
        mat = mat / mat.sum(2, keepdim=True).clamp(min=EPS)
        if (mat.sum(2) - 1).abs().max() < tol and (mat.sum(1) - 1).abs().max() < tol:
            break
    return mat


def neuralndcg_rows(scores: torch.Tensor, target: torch.Tensor, relevance: str, top_k: int,
                    tau: float = 1.0) -> torch.Tensor:
    """1 - NeuralNDCG [N], NeuralNDCG averaged over k = 1..``top_k`` (the mean Table 1 reports); 0 for an
    empty list. As allRank's ``neuralNDCG`` (allrank/models/losses/neuralNDCG.py, deterministic,
    temperature 1, powered relevancies, Sinkhorn tol 1e-6 / 50 iterations), which takes one k.

    The relaxed sort runs over a slate per image: its listed tags and the highest-scoring others, L +
    ``top_k`` in all (L the batch's longest list). Why: NeuralSort over all V tags is [N, V, V] through 50
    Sinkhorn iterations, too slow for 2 CPU cores; and the exact NDCG@k (k <= top_k) of the slate's
    ranking is that of the full one, since every listed tag and every unlisted tag that can reach the top
    k is in the slate. What the relaxation leaves out is the soft mass of tags ranked below all of them.
    """
    vocab = scores.shape[1]
    gain = list_gains(target, vocab, relevance)
    size = min(vocab, target.shape[1] + top_k)
    slate = torch.where(gain > 0, float("inf"), scores.detach().double()).topk(size, dim=1).indices
    s, g = scores.gather(1, slate), gain.gather(1, slate).to(scores.dtype)  # [N, n]
    p_hat = sinkhorn(neural_sort(s, tau))
    k = min(top_k, size)
    discount = 1.0 / torch.log2(torch.arange(2, k + 2, device=scores.device, dtype=scores.dtype))
    dcg = ((p_hat[:, :k] @ g[:, :, None])[..., 0] * discount).cumsum(1)  # [N, k]: relaxed DCG@1..k
    ideal = (g.sort(1, descending=True).values[:, :k] * discount).cumsum(1)
    nonempty = ideal[:, -1] > 0
    ndcg = (dcg / ideal.clamp(min=EPS)).mean(1)
    return (1.0 - ndcg) * nonempty


def listwise_rows(scores: torch.Tensor, target: torch.Tensor, loss: str, relevance: str, top_k: int) -> torch.Tensor:
    """The loss ``loss`` of each list [N] (see the module docstring)."""
    if loss == "lambdaloss":
        return lambdaloss_rows(scores, target, relevance)
    if loss == "neuralndcg":
        return neuralndcg_rows(scores, target, relevance, top_k)
    total = scores.new_zeros(len(target))
    if loss in ("plackett_luce", "both"):
        total = total + plackett_luce_rows(scores, target)
    if loss in ("listnet", "both"):
        total = total + listnet_rows(scores, target, relevance)
    return total


def listwise_loss(scores: torch.Tensor, target: torch.Tensor, loss: str, relevance: str, top_k: int = 10,
                  lists: torch.Tensor | None = None) -> torch.Tensor:
    """The batch's mean loss per image of tag scores [B, V]: against the ranked targets [B, L], or, given
    ``lists`` [B, A, L] (each annotator's list, -1 padded; a list of only -1 is no list), the mean over
    each image's lists of the loss against each. An image without a listed tag adds 0 (and counts)."""
    if lists is None:
        return listwise_rows(scores, target, loss, relevance, top_k).sum() / len(target)
    b, a, length = lists.shape
    rows = listwise_rows(scores.repeat_interleave(a, 0), lists.reshape(b * a, length), loss, relevance,
                         top_k).view(b, a)
    present = (lists >= 0).any(-1)
    weight = present / present.sum(1, keepdim=True).clamp(min=1)
    return (rows * weight).sum() / b


def top_scored(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The top k tag ids [B, k], best first, and their softmax probabilities over all tags."""
    scores = scores.float()
    # ranked by score, not by probability: far apart scores underflow to equal probabilities (0)
    ids = scores.topk(k, dim=1).indices
    return ids, scores.softmax(-1).gather(1, ids)


class ListwiseTagger(StagedTagger):
    """A method that gives each tag one score (``forward``: features -> [B, V]) and ranks the tags by
    it: learnt with :func:`listwise_loss` (hyperparameters ``loss``, ``relevance``, ``annotators``),
    scored by the softmax probability over all tags, on the paper's recipe (:class:`StagedTagger`)."""

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        hp = self.hparams
        lists = None
        if hp.get("annotators", "merged") == "each":
            # a batch made without the data module (no lists): the merged list is the one list
            lists = batch["lists"] if "lists" in batch else batch["target"][:, None]
        return listwise_loss(self(self.image_features(batch)), batch["target"], hp.loss, hp.relevance,
                             self.top_k, lists)

    def rank(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.scored_rank(batch)[0]

    def scored_rank(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """The top_k tag ids [B, K], best first, and their softmax probabilities over all tags."""
        return top_scored(self(self.image_features(batch)), min(self.top_k, self.num_tags))

    def tag_scores(self, features: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """The softmax probability of the tag over all tags. The same as ``scored_rank`` returns with its ids."""
        return self(features).float().softmax(-1).gather(1, ids.clamp(min=0))
