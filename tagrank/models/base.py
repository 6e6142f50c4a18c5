"""What every ranked-tag method shares: image features, evaluation, decoding hooks, metric logging.

A method subclasses :class:`RankedTagger` and says two things: how it scores (``loss``) and how it
turns an image into a ranked list of tag ids (``rank``). Everything else (the backbone, whether features
come from the cache or from images, validation/test metrics under the names ``{stage}/ndcg@{k}``, test
predictions for later analysis) lives here once, so every method runs through the same Trainer path.

Subclasses take plain hyperparameters only (numbers, strings, lists) and call
``save_hyperparameters()``, so ``Cls.load_from_checkpoint(path)`` works with ``weights_only`` loading.
"""

from __future__ import annotations

import warnings

import torch
from lightning import LightningModule

from tagrank.metrics import RankingMetrics
from tagrank.models.backbones import build_backbone


# The backbone is in eval mode on purpose (see RankedTagger.train); Lightning warns about it every fit.
warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode at the start of training.*")


class RankedTagger(LightningModule):
    def __init__(self, num_tags: int, backbone: str = "efficientnet_lite0", top_k: int = 10,
                 relevance: str = "linear") -> None:
        super().__init__()
        self.num_tags, self.top_k = num_tags, top_k
        self.backbone = build_backbone(backbone)
        self.backbone.requires_grad_(False)
        self.backbone.eval()  # Lightning restores captured module modes, so set it from the start
        self.feature_dim = self.backbone.out_dim
        self.val_metrics = RankingMetrics(top_k, relevance)
        self.test_metrics = RankingMetrics(top_k, relevance)
        self.test_predictions: list[tuple[int, list[int]]] = []

    # -- what a method defines ---------------------------------------------------------------
    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def rank(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Ranked tag ids [B, top_k], best first, no tag twice."""
        raise NotImplementedError

    # -- shared machinery -----------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # Lets ``tagrank-eval`` rebuild the right class from the checkpoint alone.
        checkpoint["tagrank_class"] = f"{type(self).__module__}.{type(self).__qualname__}"

    @property
    def backbone_trainable(self) -> bool:
        return any(p.requires_grad for p in self.backbone.parameters())

    def train(self, mode: bool = True) -> RankedTagger:
        # The backbone always runs in eval mode: its BatchNorm statistics and dropout stay those of
        # the pretrained network, also while it is fine-tuned (batch 16 is too small to re-estimate them).
        super().train(mode)
        self.backbone.eval()
        return self

    def image_features(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        if self.backbone_trainable:
            if "image" not in batch:
                raise RuntimeError("the backbone is being fine-tuned but the batch has no images")
            return self.backbone(batch["image"])
        if "features" in batch:
            return batch["features"]
        with torch.no_grad():
            return self.backbone(batch["image"])

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self.loss(batch)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"training loss is {loss.item()} at step {self.global_step}")
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["target"]))
        return loss

    def _evaluate(self, batch: dict[str, torch.Tensor], stage: str, metrics: RankingMetrics) -> torch.Tensor:
        preds = self.rank(batch)
        metrics.update(preds, batch["target"])
        if (batch["target"] >= 0).any():
            self.log(f"{stage}/loss", self.loss(batch), batch_size=len(batch["target"]), sync_dist=True)
        return preds

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "val", self.val_metrics)

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        preds = self._evaluate(batch, "test", self.test_metrics)
        self.test_predictions.extend(zip(batch["index"].tolist(), preds.tolist()))

    def predict_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self.rank(batch)

    def _log_metrics(self, stage: str, metrics: RankingMetrics) -> None:
        values = metrics.compute()  # already reduced across processes by torchmetrics
        self.log_dict({f"{stage}/{k}": v.float() for k, v in values.items()}, sync_dist=False)
        metrics.reset()

    def on_validation_epoch_end(self) -> None:
        self._log_metrics("val", self.val_metrics)

    def on_test_epoch_start(self) -> None:
        self.test_predictions = []

    def on_test_epoch_end(self) -> None:
        self._log_metrics("test", self.test_metrics)


def greedy_distinct(logits: torch.Tensor) -> torch.Tensor:
    """Decode per-step tag logits [B, T, V] to T distinct tags: at each step the best unused tag."""
    batch, steps, vocab = logits.shape
    used = torch.zeros(batch, vocab, dtype=torch.bool, device=logits.device)
    out = torch.empty(batch, min(steps, vocab), dtype=torch.long, device=logits.device)
    for t in range(out.shape[1]):
        pick = logits[:, t].masked_fill(used, float("-inf")).argmax(-1)
        out[:, t] = pick
        used[torch.arange(batch, device=logits.device), pick] = True
    return out
