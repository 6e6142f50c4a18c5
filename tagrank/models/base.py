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
from pathlib import Path
from typing import Annotated, Callable

import torch
from torch import nn
from annotated_types import Interval
from lightning import LightningModule
from lightning.pytorch.trainer.states import TrainerFn
from torchmetrics import MeanMetric

from tagrank.checkpoint import hyperparameters, load, read_model, read_plateau, write_model, write_plateau
from tagrank.config import PositiveInt
from tagrank.errors import TagrankError
from tagrank.metrics import RankingMetrics, Relevance, SetMetrics
from tagrank.models.backbones import backbone_input, backbone_output, build_backbone, top_output
from tagrank.models.staged import StagedFinetuning, finetune_step

class RankedTagger(LightningModule):
    def __init__(self, num_tags: int, backbone: str = "efficientnet_lite0", top_k: PositiveInt = 10,
                 relevance: Relevance = "linear") -> None:
        super().__init__()
        self.num_tags, self.top_k = num_tags, top_k
        self.backbone = build_backbone(backbone)
        self.backbone.requires_grad_(False)
        self.backbone.eval()  # Lightning restores captured module modes, so set it from the start
        # Saved with the weights: a checkpoint written after the backbone was unfrozen must be scored
        # on images through its own backbone, never on the cached features of the pretrained one.
        self.register_buffer("backbone_finetuned", torch.tensor(False))
        self._finetuned: bool | None = None  # the buffer's value on the host (see is_finetuned)
        self.register_load_state_dict_post_hook(lambda module, keys: setattr(module, "_finetuned", None))
        self.feature_dim = self.backbone.out_dim
        self.val_metrics = RankingMetrics(top_k, relevance)
        self.test_metrics = RankingMetrics(top_k, relevance)
        # Mean loss per image as sum states: exact under DDP (Lightning's sync_dist mean is not for odd counts).
        # nan_strategy="disable": a NaN loss makes the mean NaN (the run diverged: NonFiniteGuard says so in
        # one line) instead of torchmetrics' default, which drops it with a warning ("Encountered `nan`
        # values in tensor. Will be removed.") and reports the mean of the rest as if nothing happened.
        self.val_loss, self.test_loss = MeanMetric(nan_strategy="disable"), MeanMetric(nan_strategy="disable")
        self.test_set_metrics = SetMetrics()  # only for methods that say when to stop (predicted_set)
        self.test_predictions: list[tuple[int, list[int]]] = []

    # A validation that belongs to training: Lightning's own while fitting, or the one train.py runs on the
    # final weights of a run that ended before its first (validate_if_never_validated sets this). What a
    # method chooses on the validation split (the scorer's stop threshold) is chosen then, never by
    # tagrank-eval on a trained model.
    final_validation = False

    @property
    def validating_to_fit(self) -> bool:
        trainer = self.trainer
        return self.final_validation or (trainer.state.fn == "fit" and not trainer.sanity_checking)

    # -- what a method defines ---------------------------------------------------------------
    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def rank(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Ranked tag ids [B, top_k], best first. -1 pads a list that ended early; a tag emitted twice (a
        captioning decoder can) scores as a miss the second time (see :mod:`tagrank.metrics`)."""
        raise NotImplementedError

    def predicted_set(self, batch: dict[str, torch.Tensor], preds: torch.Tensor) -> torch.Tensor | None:
        """The tags the method names for each image when it decides itself how many [B, <= top_k] (-1
        padded), for the set precision / recall / F1 of the test split; None (the default): a method
        that always names ``top_k`` tags has no set of its own."""
        return None

    def stop_rule(self) -> str | None:
        """What makes :meth:`predicted_set` end an image's list, in words (``tagrank-predict stop=true``
        prints it); None where there is no set of its own."""
        return None

    def stop_score(self) -> float | None:
        """Where the stop rule is a threshold on the tags' scores (those :meth:`scored_rank` returns): the
        score a tag needs to stay in the set (the first always stays). An exported model's sidecar gives
        it, so its users can apply the rule to the ``scores`` output; None for other rules or none."""
        return None

    # -- shared machinery -----------------------------------------------------------------------
    @classmethod
    def load_from_checkpoint(cls, checkpoint_path, *args, **kwargs):
        """Lightning's, with the hyperparameters the class gained since the checkpoint was written at the
        value they had then (tagrank.checkpoint.ADDED_HPARAMS), not today's default: Lightning builds the
        model from the saved ones before any hook runs, so a missing one would build another layout."""
        if isinstance(checkpoint_path, (str, Path)):
            saved = load(Path(checkpoint_path))
            added = {k: v for k, v in hyperparameters(saved).items() if k not in (saved.get("hyper_parameters") or {})}
            kwargs = {**added, **kwargs}
        return super().load_from_checkpoint(checkpoint_path, *args, **kwargs)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        write_model(checkpoint, self)  # eval, predict, export and resume rebuild the right class from it alone

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        read_model(checkpoint)

    # backbone.finetune_blocks (set by tagrank.pipeline.build_model, checked by check_backbone): fine-tune
    # only the backbone's last N blocks and its head convolution, on the frozen trunk's outputs cached
    # once per image ("trunk" in the batch) instead of on images; None: the whole backbone, on images.
    # Not a hyperparameter: it changes how training computes, not the model (a checkpoint holds the
    # whole backbone and is used on images like any fine-tuned one); the run's settings keep it (RunSettings).
    finetune_blocks: int | None = None

    def finetuned_modules(self) -> list[nn.Module]:
        """What staged fine-tuning unfreezes: the whole backbone, or its top (``finetune_blocks``)."""
        if self.finetune_blocks is None:
            return [self.backbone]
        return self.backbone.top_modules(self.finetune_blocks)

    @property
    def backbone_trainable(self) -> bool:
        # The backbone (or its top) is frozen and unfrozen as a whole (StagedFinetuning): one parameter
        # tells, and checking all ~150 took 0.1 ms of every training step.
        return next(self.finetuned_modules()[0].parameters()).requires_grad

    @property
    def is_finetuned(self) -> bool:
        """``backbone_finetuned``, read from the device once (a host sync) rather than at every step."""
        if self._finetuned is None:
            self._finetuned = bool(self.backbone_finetuned)
        return self._finetuned

    def mark_finetuned(self) -> None:
        self.backbone_finetuned.fill_(True)
        self._finetuned = True

    def train(self, mode: bool = True) -> RankedTagger:
        # The backbone always runs in eval mode: its BatchNorm statistics and dropout stay those of
        # the pretrained network, also while it is fine-tuned (batch 16 is too small to re-estimate them).
        super().train(mode)
        self.backbone.eval()
        return self

    def image_features(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        if "computed_features" in batch:  # see _evaluate
            return batch["computed_features"]
        if "trunk" in batch and self.finetune_blocks is not None and (self.backbone_trainable or self.is_finetuned):
            # The top on the frozen trunk's cached output: what the whole backbone gives on the images
            return top_output(self.backbone, batch["trunk"], self.finetune_blocks, self.feature_grid)
        if self.backbone_trainable:
            if "image" not in batch:
                raise TagrankError("the backbone is being fine-tuned but the batch has no images")
            return self.encode(batch["image"])
        if self.is_finetuned:
            if "image" not in batch:
                raise TagrankError("this model's backbone was fine-tuned: it needs images, not cached features")
        elif "features" in batch:
            return batch["features"]
        with torch.no_grad():
            return self.encode(batch["image"])

    # What the method reads from the backbone: None, the pooled vector; g, the last feature map pooled
    # to g x g cells (cached as float16; see tagrank.data.features).
    feature_grid: int | None = None

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """The backbone's output for a batch of images, in the form the method reads (``feature_grid``)."""
        return backbone_output(self.backbone, images, self.feature_grid)

    def on_before_batch_transfer(self, batch, dataloader_idx: int):
        # The ground-truth list lengths, read on the host before the batch goes to the device, so that a
        # method can use them (LSTMTagger runs each list's steps only) without a host sync.
        if isinstance(batch, dict) and isinstance(batch.get("target"), torch.Tensor):
            batch["lengths"] = (batch["target"] >= 0).sum(1).tolist()
        return batch

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        # A non-finite loss is caught by NonFiniteGuard (added to every run) without a host sync per step.
        loss = self.loss(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["target"]))
        return loss

    def _evaluate(self, batch: dict[str, torch.Tensor], stage: str, metrics: RankingMetrics) -> torch.Tensor:
        # rank and loss both need the features: one backbone pass (on images, for a fine-tuned model)
        batch = {**batch, "computed_features": self.image_features(batch)}
        preds = self.rank(batch)
        metrics.update(preds, batch["target"])
        if (batch["target"] >= 0).any():
            # The batch's mean loss once per image: MeanMetric(nan_strategy="disable") drops a weight= argument
            # (torchmetrics 1.x sets every weight to 1 there), which made the loss a mean of batch means, unequal
            # under DDP (tests/test_scaling.py and test_slurm.py's DDP tests found it).
            loss = self.loss(batch).detach()
            (self.val_loss if stage == "val" else self.test_loss).update(loss.expand(len(batch["target"])))
        return preds

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "val", self.val_metrics)

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        batch = {**batch, "computed_features": self.image_features(batch)}  # one backbone pass for all below
        preds = self._evaluate(batch, "test", self.test_metrics)
        chosen = self.predicted_set(batch, preds)
        if chosen is not None:
            self.test_set_metrics.update(chosen, batch["target"])
        self.test_predictions.extend(zip(batch["index"].tolist(), preds.tolist()))

    def predict_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self.rank(batch)

    def _log_metrics(self, stage: str, metrics: RankingMetrics) -> dict[str, torch.Tensor]:
        values = metrics.compute()  # already reduced across processes by torchmetrics (exact sum states)
        loss = self.val_loss if stage == "val" else self.test_loss
        with warnings.catch_warnings():  # computed on every rank (it syncs), also one that saw no image
            warnings.simplefilter("ignore")
            mean_loss = loss.compute()
        if torch.isfinite(mean_loss):  # no ground truth anywhere: no loss
            values["loss"] = mean_loss
        self.log_dict({f"{stage}/{k}": v.float() for k, v in values.items()}, sync_dist=False)
        metrics.reset()
        loss.reset()
        return values

    def on_validation_epoch_end(self) -> None:
        self._log_metrics("val", self.val_metrics)

    def on_test_epoch_start(self) -> None:
        self.test_predictions = []

    def on_test_epoch_end(self) -> None:
        self._log_metrics("test", self.test_metrics)
        if self.test_set_metrics.update_count:
            self.log_dict({f"test/{k}": v.float() for k, v in self.test_set_metrics.compute().items()}, sync_dist=False)
        self.test_set_metrics.reset()
        if torch.distributed.is_available() and torch.distributed.is_initialized() and self.trainer.world_size > 1:
            # Each rank scored its own shard of the test images; every rank gets all predictions.
            shards: list = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(shards, self.test_predictions)
            self.test_predictions = [p for shard in shards for p in shard]

    # -- scores, for tagrank-predict and tagrank-export ---------------------------------------------
    def scored_rank(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """``rank``'s tag ids [B, K] (the same list) and the model's score of each [B, K] (0 where -1 pads).

        Why after ``rank`` rather than inside it: every method's decoding stays in one place, and a score
        (``tag_scores``) is a pure function of the features and the decoded ids. An empty batch gives empty
        [0, K] lists (the recurrent decoders cannot reshape 0 rows); a traced export never takes this branch
        (it is traced on 2 images), so the exported file's own behaviour on 0 images is the runtime's."""
        target = batch["target"]  # one row per image, whether images or cached features are given
        if target.shape[0] == 0:
            return (torch.empty((0, self.top_k), dtype=torch.long, device=target.device),
                    torch.empty((0, self.top_k), device=target.device))
        batch = {**batch, "computed_features": self.image_features(batch)}
        ids = self.rank(batch)
        return ids, self.tag_scores(batch["computed_features"], ids).masked_fill(ids < 0, 0.0)

    def tag_scores(self, features: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """The score [B, K] of each decoded tag ``ids`` [B, K] (-1 allowed) given image ``features`` [B, D].

        Its docstring's first sentence says what the score is (``tagrank-predict`` prints it)."""
        raise NotImplementedError


class SolvedTagger(RankedTagger):
    """A method fitted in one solve on the training split, not by gradient steps (the frequency prior,
    the SVMs): :meth:`fit_training_split` runs when fitting starts; one pass over the training loader
    then logs the training loss, after which the run stops itself (more epochs could not change
    anything). Checkpoints, validation, test metrics and predictions go through the same Trainer path as
    every other method. Subclasses pass the training loss as ``loss`` like any method.
    """

    def __init__(self, num_tags: int, backbone: str = "efficientnet_lite0", top_k: PositiveInt = 10,
                 relevance: Relevance = "linear") -> None:
        super().__init__(num_tags, backbone, top_k, relevance)
        self.automatic_optimization = False

    def fit_training_split(self, dm) -> None:
        """Fit the model from the data module's training split (``dm.rows("train")``), in place."""
        raise NotImplementedError

    def on_fit_start(self) -> None:
        # From the data module itself, not from the batches: exact under DDP (no sampler padding counted
        # twice) and after a run resumed mid-epoch.
        self.fit_training_split(self.trainer.datamodule)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = super().training_step(batch, batch_idx)  # the training loss of the fitted model, for the logs
        self.optimizers().step()  # a no-op optimiser, but it counts the step (checkpointing follows steps)
        return loss

    def on_train_epoch_end(self) -> None:
        self.trainer.should_stop = True  # one solve is the whole fit

    def configure_optimizers(self):
        return None


Factor = Annotated[float, Interval(gt=0, lt=1)]  # the learning rate is multiplied by it on a plateau


class StagedTagger(RankedTagger):
    """The paper's training recipe, shared by the methods trained by gradient steps (``lstm``,
    ``naive_rnn``, ``scorer``): Adam on
    everything but the backbone, the learning rate halved when val NDCG stops improving, and the staged
    fine-tuning of the backbone. Subclasses save ``lr``, ``betas``, ``eps``, ``lr_factor``,
    ``lr_patience`` and ``finetune_*`` as hyperparameters.

    The plateau is stepped after each validation with its own ``val/ndcg_mean`` (``lr_patience`` counts
    validations, as early stopping's patience does), not by Lightning at each epoch end, where the last
    value would be missing before the first validation and stale after an epoch without one
    (``trainer.max_steps``, ``check_val_every_n_epoch``). Its state travels in the checkpoint.
    """

    plateau: torch.optim.lr_scheduler.ReduceLROnPlateau | None = None
    _plateau_state: dict | None = None

    def configure_optimizers(self):
        params = [p for n, p in self.named_parameters() if not n.startswith("backbone.")]
        hp = self.hparams
        # fused: one kernel for all parameters (CPU and GPU), about half the time of the default on a CPU
        optimizer = torch.optim.Adam(params, lr=hp.lr, betas=tuple(hp.betas), eps=hp.eps, fused=True)
        self.plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="max", factor=hp.lr_factor,
                                                                  patience=hp.lr_patience)
        if self._plateau_state:  # resuming: on_load_checkpoint runs before this
            self.plateau.load_state_dict(self._plateau_state)
        return optimizer

    def on_validation_epoch_end(self) -> None:
        values = self._log_metrics("val", self.val_metrics)
        if self.trainer.state.fn == "fit" and not self.trainer.sanity_checking and self.plateau is not None:
            self.plateau.step(float(values["ndcg_mean"]))

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        if self.plateau is not None:
            write_plateau(checkpoint, self.plateau.state_dict())

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        self._plateau_state = read_plateau(checkpoint)

    def configure_callbacks(self):
        # For fit only: a trainer.test after trainer.fit still holds the one fit added, which this would
        # replace (and Lightning would say so); testing needs no schedule.
        if finetune_step(self) > 0 and self.trainer.state.fn == TrainerFn.FITTING:
            return [StagedFinetuning(finetune_step(self), self.hparams.finetune_lr,
                                     self.hparams.finetune_weight_decay)]
        return []


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


def list_lengths(batch: dict) -> list[int]:
    """The number of ground-truth tags of each row (``on_before_batch_transfer`` put them in the batch;
    computed here for a batch that did not come through a loader)."""
    return batch["lengths"] if "lengths" in batch else (batch["target"] >= 0).sum(1).tolist()


def plackett_luce_nll(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The negative log-likelihood of each ground-truth list [B, T] (-1 padded) under the Plackett-Luce
    model whose step-t scores are ``logits[:, t]`` [B, T, V], summed over the batch.

    Step t's softmax runs only over the tags not named before it in the list: the exact likelihood of a
    ranked list (ListMLE), and the distribution decoding draws from, since it never repeats a tag. The
    paper's loss (a softmax over all V tags at every step) spends probability on tags already named.
    """
    valid = target >= 0
    named = nn.functional.one_hot(target.clamp(min=0), logits.shape[-1]).bool() & valid[..., None]  # [B, T, V]
    before = (named.cumsum(1) - named.long()) > 0  # named at an earlier step
    nll = torch.logsumexp(logits.masked_fill(before, float("-inf")), -1) - logits.gather(-1, target.clamp(min=0)[..., None])[..., 0]
    return (nll * valid).sum()


def beam_distinct(step: Callable[[int, tuple[torch.Tensor, ...], torch.Tensor | None], tuple[torch.Tensor, tuple]],
                  state: tuple[torch.Tensor, ...], steps: int, width: int) -> torch.Tensor:
    """Beam search for the list of ``steps`` distinct tags with the highest summed log-probability, each
    step's softmax renormalised over the tags not yet in the list; [B, steps] ids, best first.

    ``step(t, state, previous)`` returns the logits [N, V] of step t for N = B x beams rows and the next
    state; ``previous`` [N] is the tag each row emitted at step t - 1 (None at t = 0), and every tensor of
    ``state`` has one row per beam along dim 0 (reordered here as beams are kept). Width 1 is greedy
    decoding with repeats masked (``greedy_distinct``'s list).
    """
    batch = state[0].shape[0]  # shape[0], not len(): torch.jit.trace (tagrank-export) keeps it the batch size
    scores = state[0].new_zeros(batch, 1, dtype=torch.float32)
    seqs = torch.zeros(batch, 1, 0, dtype=torch.long, device=state[0].device)
    used: torch.Tensor | None = None
    previous = None
    for t in range(steps):
        logits, state = step(t, state, previous)
        beams, vocab = logits.shape[0] // batch, logits.shape[-1]
        if used is None:
            used = torch.zeros(batch, beams, vocab, dtype=torch.bool, device=logits.device)
        logp = logits.float().masked_fill(used.view(-1, vocab), float("-inf")).log_softmax(-1).view(batch, beams, vocab)
        scores, flat = (scores[..., None] + logp).view(batch, -1).topk(min(width, beams * (vocab - t)), dim=1)
        beam, tag = flat // vocab, flat % vocab
        rows = (beam + torch.arange(batch, device=beam.device)[:, None] * beams).view(-1)
        state = tuple(s[rows] for s in state)
        seqs = torch.cat([seqs.gather(1, beam[..., None].expand(-1, -1, t)), tag[..., None]], dim=-1)
        used = used.gather(1, beam[..., None].expand(-1, -1, vocab)).scatter(2, tag[..., None], 1)  # 1: traceable True
        previous = tag.view(-1)
    return seqs[:, 0]
