"""What a tagrank checkpoint holds besides Lightning's own entries: every key written and read here alone.

Lightning keeps the weights (``state_dict``), the model's hyperparameters (``hyper_parameters``) and the
loop and optimiser state. tagrank adds, so that train (resume), eval, predict and export need the
checkpoint alone:

- ``tagrank_class``: the class that wrote it (``module.Class``), to rebuild the right one;
- ``tagrank_inputs``: ``{"tags": [...], "image_size": n}``, the tag names in the order of the model's
  outputs and the image size its backbone ran at (:class:`ModelInputs`);
- ``tagrank_settings``: what the run trained on besides the hyperparameters, ``data.*``, ``backbone.*``
  and the seed, flat (:class:`RunSettings`);
- ``lr_plateau``: the learning-rate plateau's state, which a resumed run goes on with;
- ``state_dict["backbone_finetuned"]``: whether the backbone was fine-tuned (a buffer saved with the
  weights: such a model is scored through its own backbone, never on cached features).

The names are the file format: checkpoints written by earlier versions carry the same. One written before
a key existed lacks it, and each reader here says what then. Plain values only, so every checkpoint loads
with ``weights_only=True``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.callbacks import Callback

from tagrank.errors import TagrankError

CLASS_KEY = "tagrank_class"
INPUTS_KEY = "tagrank_inputs"
SETTINGS_KEY = "tagrank_settings"
PLATEAU_KEY = "lr_plateau"
FINETUNED_KEY = "backbone_finetuned"  # in state_dict (RankedTagger's buffer)
# Settings renamed since checkpoints first kept them (old name -> new): an older checkpoint's settings are read
# under the new name, so resuming it compares like with like (data.image_size became data.render_size, issue 25).
RENAMED_SETTINGS = {"data.image_size": "data.render_size"}
# Hyperparameters a model gained since its checkpoints were first written (its class -> {name: the value every
# checkpoint written before had}), where today's default is another: an older checkpoint is rebuilt (eval, predict,
# export: RankedTagger.load_from_checkpoint) and compared on resume (trained_with) with the value it was trained
# with. label_query's layer was nn.TransformerDecoderLayer's (self-attention among the tag queries) until 3a82a8b.
ADDED_HPARAMS = {"tagrank.models.label_query.LabelQueryDecoder": {"self_attention": True, "groups": None}}


def load(path: Path) -> dict[str, Any]:
    """A checkpoint's entries, memory-mapped (tensors are read only when used), or one line saying the
    file is none."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:
        raise TagrankError(f"{path}: not a readable checkpoint ({str(err).strip().splitlines()[0][:200]})") from err


def model_class(path: Path) -> str:
    """The class that wrote a tagrank checkpoint (``module.Class``); the tensors are not read."""
    saved = load(path)
    if CLASS_KEY not in saved:
        raise TagrankError(f"{path}: not a tagrank checkpoint (no {CLASS_KEY!r} entry)")
    return saved[CLASS_KEY]


def write_model(checkpoint: dict, model: torch.nn.Module) -> None:
    """The model's own entries (from its ``on_save_checkpoint``): its class."""
    checkpoint[CLASS_KEY] = f"{type(model).__module__}.{type(model).__qualname__}"


def read_model(checkpoint: dict) -> None:
    """Before a model loads ``checkpoint`` (its ``on_load_checkpoint``): the entries a checkpoint from
    before they existed lacks, with the value they had then (not fine-tuned)."""
    checkpoint["state_dict"].setdefault(FINETUNED_KEY, torch.tensor(False))


def write_plateau(checkpoint: dict, state: dict) -> None:
    checkpoint[PLATEAU_KEY] = state


def read_plateau(checkpoint: dict) -> dict | None:
    """The learning-rate plateau's state, or None (a checkpoint from before it was kept)."""
    return checkpoint.get(PLATEAU_KEY)


def inputs(saved: dict) -> tuple[list[str], int] | None:
    """The tag names and image size a checkpoint holds, or None (written before tagrank kept them)."""
    entry = saved.get(INPUTS_KEY)
    if not entry:
        return None
    return list(entry["tags"]), int(entry["image_size"])


def hyperparameters(saved: dict) -> dict[str, Any]:
    """A checkpoint's model hyperparameters, with those its class gained since (:data:`ADDED_HPARAMS`) at the
    value they had when it was written, where it lacks them."""
    written = dict(saved.get("hyper_parameters") or {})
    return {**ADDED_HPARAMS.get(saved.get(CLASS_KEY), {}), **written}


def trained_with(saved: dict) -> dict[str, Any]:
    """The settings a checkpoint was trained with: ``model.<hparam>`` (:func:`hyperparameters`), and the
    ``data.*``, ``backbone.*`` and ``seed`` of :class:`RunSettings` (absent from a checkpoint written before
    they were kept)."""
    there = {f"model.{k}": v for k, v in hyperparameters(saved).items()}
    there.update(saved.get(SETTINGS_KEY) or {})
    for old, new in RENAMED_SETTINGS.items():
        if there.get(old) is not None and new not in there:  # written before the rename
            there[new] = there.pop(old)
    return there


def check_vocabulary(ckpt: Path, num_tags: int, tags: Sequence[str], where: str, advice: str,
                     saved_tags: Sequence[str] | None = None) -> None:
    """The vocabulary a model is used with must be its own: as many tags, and (where the checkpoint holds
    its tag names, ``saved_tags``) the same names in the same order, else every score would go to the
    wrong tag. One line naming ``where`` the vocabulary comes from, the first tags that differ, and ``advice``."""
    if len(tags) != num_tags:
        raise TagrankError(f"{ckpt}: the model predicts {num_tags} tags but {where} has a vocabulary of "
                           f"{len(tags)}; {advice}")
    if saved_tags is None or list(saved_tags) == list(tags):
        return
    differ = [i for i, (a, b) in enumerate(zip(saved_tags, tags)) if a != b]
    shown = "; ".join(f"tag {i}: {saved_tags[i]!r} there, {tags[i]!r} here" for i in differ[:3])
    more = f"; and {len(differ) - 3} more" if len(differ) > 3 else ""
    raise TagrankError(f"{ckpt}: the model's {num_tags} tags are not those of {where} ({shown}{more}); {advice}")


class ModelInputs(Callback):
    """Keep in every checkpoint what using the model needs besides its weights: the tag names (in the
    order of the model's outputs) and the image size its backbone ran at (``tagrank_inputs``).

    So ``tagrank-predict`` and ``tagrank-export`` need the checkpoint alone, no dataset or run config,
    and ``tagrank-eval`` can tell another vocabulary of the same size from the model's own.
    """

    def __init__(self, image_size: int) -> None:
        self.image_size = image_size

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        vocab = getattr(trainer.datamodule, "vocab", None)
        if vocab is not None:
            checkpoint[INPUTS_KEY] = {"tags": list(vocab.tags), "image_size": int(self.image_size)}


class RunSettings(Callback):
    """Keep in every checkpoint the settings that decide what its run trains, besides the model's own
    hyperparameters (which Lightning keeps): ``data.*``, ``backbone.*`` and the seed, flat
    (``tagrank_settings``). A resume with other settings is refused with them named
    (``tagrank.cli.train.check_same_settings``) instead of training on with defaults the first command had
    overridden.
    """

    def __init__(self, settings: dict[str, Any]) -> None:
        self.settings = settings

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        checkpoint[SETTINGS_KEY] = self.settings
