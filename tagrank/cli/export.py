"""Hand a trained model to someone who does not run tagrank: one ONNX or TorchScript file, decoding included.

    tagrank-export ckpt_path=<run>/checkpoints/best.ckpt format=onnx out=tagger.onnx
    tagrank-export ckpt_path=... format=torchscript out=tagger.pt top_k=5

The file takes ``images``: uint8 RGB [B, 3, S, S] at the model's image size S, each photo resized whole to
S x S (no crop), as in training; the scaling to [0, 1] and the backbone's mean/std are applied inside. It
returns ``ids`` (int64 [B, K], tag ids best first, -1 where a captioning list ended) and ``scores``
(float32 [B, K], the model's score of each tag, 0 where -1 pads), the method's decoding included (greedy
without repeats for the LSTM and Naive-RNN + masking, greedy to END for the captioning Naive-RNN, the
best decision values for the SVMs, the training order for the prior). Resizing stays outside: resize
operators differ between runtimes, so the size is fixed and written down instead. ``<out>.json`` beside
it holds the tag names (id i is ``tags[i]``), this preprocessing, and the stop rule of ``tagrank-predict
stop=true`` (the scorer's as ``stop_score``, a threshold on ``scores``).

Both files are made by tracing (``torch.jit.trace``; ONNX by the TorchScript-based exporter,
``dynamo=False``): measured with torch 2.14, the torch.export-based exporter fixed the batch size of the
recurrent decoders (and could not export the captioning one's early stop), while tracing keeps it free.
``tests/test_export.py`` runs both files (ONNX Runtime, ``torch.jit.load``) against PyTorch.
"""

from __future__ import annotations

import json
import logging
import warnings
from contextlib import contextmanager
from pathlib import Path

import torch
from omegaconf import DictConfig
from torch import nn

from tagrank.cli import command
from tagrank.cli.predict import Tagger, load_tagger, unknown_targets
from tagrank.errors import TagrankError
from tagrank.files import atomic_write, atomic_write_text, check_writable
from tagrank.models.base import RankedTagger

log = logging.getLogger("tagrank")

FORMATS = {"onnx": (".onnx",), "torchscript": (".pt", ".pth")}  # each format's file name endings
ONNX_OPSET = 17


def check_images(images: torch.Tensor, size: int) -> torch.Tensor:
    """The input check of the TorchScript file (compiled by ``torch.jit.script``, so it stays a check
    in the traced graph rather than being traced away): uint8 [B, 3, size, size], as an ONNX Runtime
    session checks the ONNX file's declared input. Without it a float tensor or another size ran and
    gave other tags."""
    if images.dtype != torch.uint8:
        raise ValueError(f"images: expected uint8 pixels 0..255 (scaling and mean/std are inside the model), "
                         f"got another dtype")
    if images.dim() != 4 or images.shape[1:] != [3, size, size]:
        raise ValueError(f"images: expected shape [batch, 3, {size}, {size}] (each whole photo resized to "
                         f"{size}x{size}), got {list(images.shape)}")
    return images


class ExportedTagger(nn.Module):
    """What the exported file computes: uint8 images [B, 3, S, S] -> (ids [B, K], scores [B, K])."""

    def __init__(self, model: RankedTagger, image_size: int) -> None:
        super().__init__()
        self.model, self.image_size = model, image_size
        # TorchScript: the scripted check_images (made in export_tagger, inside tracing()); ONNX: None, as
        # the ONNX graph declares its input's dtype and size and the runtime checks them.
        self.check = None

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.check is not None:
            images = self.check(images, self.image_size)
        return self.model.scored_rank({"image": images, "target": unknown_targets(images)})


@contextmanager
def tracing(model: RankedTagger):
    """Let ``torch.jit.trace`` walk a LightningModule with no Trainer attached (as ``to_torchscript`` does),
    with the warnings that tracing itself raises silenced here only: the deprecation of the
    TorchScript-based tools (chosen above on purpose) and the TracerWarnings of the Python ints that the
    decoders turn into constants (the list length; the batch size stays free and is tested)."""
    model._jit_is_scripting = True
    fastpath = torch.backends.mha.get_fastpath_enabled()
    # Attention's fused inference kernel (_native_multi_head_attention) has no ONNX form: plain ops instead.
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.")
            warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.")
            warnings.filterwarnings("ignore", message=r".*legacy TorchScript-based ONNX export.*")
            # About LSTM initial states and other batch sizes: the tests run the files on other batch sizes.
            warnings.filterwarnings("ignore", message=r".*batch_size other than 1.*LSTM.*")
            warnings.filterwarnings("ignore", message=r".*is deprecated.*(torch\.export|torch\.compile).*")
            yield
    finally:
        model._jit_is_scripting = False
        torch.backends.mha.set_fastpath_enabled(fastpath)


def example_images(image_size: int, batch: int = 2) -> torch.Tensor:
    """Fixed random pixels to trace with (any input runs the same operations)."""
    return torch.randint(0, 256, (batch, 3, image_size, image_size), dtype=torch.uint8,
                         generator=torch.Generator().manual_seed(0))


def export_tagger(tagger: Tagger, fmt: str, out: Path) -> Path:
    """Write the traced model to ``out`` and its sidecar to ``<out>.json`` (each atomically); returns the sidecar."""
    model = tagger.model.eval()
    if fmt == "onnx" and model.hparams.get("beam_width", 1) > 1:
        # Measured: the traced beam search runs in TorchScript, but ONNX Runtime rejects its GatherElements.
        raise TagrankError(f"{tagger.checkpoint}: beam search (model.beam_width={model.hparams.beam_width}) does "
                           "not export to ONNX; use format=torchscript")
    wrapper = ExportedTagger(model, tagger.image_size).eval().requires_grad_(False)  # for inference: no graph
    images = example_images(tagger.image_size)
    grid = getattr(model, "feature_grid", None)
    if fmt == "onnx" and grid is not None:
        with torch.no_grad():
            cells = model.backbone.feature_map(images[:1].float()).shape[-1]
        if cells % grid:  # the exporter turns adaptive pooling into a fixed AvgPool only for whole multiples
            raise TagrankError(f"{tagger.checkpoint}: its {cells}x{cells} feature map pooled to {grid}x{grid} "
                               "(model.grid) does not export to ONNX; use format=torchscript")
    with tracing(model):
        if fmt == "torchscript":
            wrapper.check = torch.jit.script(check_images)
            traced = torch.jit.trace(wrapper, (images,), check_trace=False)
            atomic_write(out, lambda tmp: traced.save(tmp))
        else:
            atomic_write(out, lambda tmp: torch.onnx.export(
                wrapper, (images,), tmp, dynamo=False, opset_version=ONNX_OPSET, input_names=["images"],
                output_names=["ids", "scores"], dynamic_axes={name: {0: "batch"} for name in ("images", "ids", "scores")}))
    sidecar = out.with_name(out.name + ".json")
    atomic_write_text(sidecar, json.dumps(describe(tagger, fmt, out), indent=1))
    return sidecar


def describe(tagger: Tagger, fmt: str, out: Path) -> dict:
    """The sidecar: what the file expects and returns, and the tag names."""
    model, size = tagger.model, tagger.image_size
    return {
        "file": out.name, "format": fmt, "method": type(model).__name__, "checkpoint": str(tagger.checkpoint),
        "input": {"name": "images", "dtype": "uint8", "layout": "NCHW", "shape": ["batch", 3, size, size],
                  "channels": "RGB", "resize": f"the whole photo to {size}x{size} (no crop; bilinear, antialiased)",
                  "normalisation": "inside the model: x / 255, then (x - mean) / std per channel",
                  "mean": list(model.backbone.mean), "std": list(model.backbone.std),
                  "batch": empty_batch(model, fmt)},
        "outputs": {"ids": f"int64 [batch, {model.top_k}]: tag ids, best first; -1 where a list ended early",
                    "scores": f"float32 [batch, {model.top_k}]: {tagger.score_meaning}; 0 where ids is -1"},
        "top_k": model.top_k,
        # tagrank-predict stop=true's rule: None where the method always names top_k tags; a captioning
        # decoder's ids already end at -1; the scorer's is a threshold on the scores (the first tag stays).
        "stop_rule": model.stop_rule(),
        "stop_score": model.stop_score(),
        "tags": tagger.tags,
    }


def empty_batch(model: RankedTagger, fmt: str) -> str:
    """What the file does with a batch of 0 images, for the sidecar. Measured (onnxruntime 1.32, CPU):
    ONNX Runtime's LSTM kernel ends the whole process (SIGABRT, no exception to catch) on a batch of 0;
    its Reshape of the label-query decoder's pooled feature map (a -1 in the shape) refuses 0 images with an
    error; the other ONNX files and every TorchScript file return [0, K] outputs."""
    if fmt == "onnx" and getattr(model, "feature_grid", None) is not None:
        return "1 or more images: ONNX Runtime's Reshape of the pooled feature map refuses a batch of 0 with an error"
    if fmt == "onnx" and any(isinstance(m, nn.RNNBase) for m in model.modules()):
        return ("1 or more images: ONNX Runtime aborts the whole process (SIGABRT) on a batch of 0 with this "
                "method's LSTM, so skip the call when there is no image")
    return "0 or more images (0 images give [0, top_k] outputs)"


def export(cfg: DictConfig) -> Path:
    if cfg.format not in FORMATS:
        raise TagrankError(f"format={cfg.format!r}: expected one of {list(FORMATS)}")
    out = Path(cfg.out).expanduser()
    if out.suffix not in FORMATS[cfg.format]:
        raise TagrankError(f"out={cfg.out!r}: expected a name ending in {' or '.join(FORMATS[cfg.format])} "
                           f"(format={cfg.format})")
    ckpt = Path(str(cfg.ckpt_path)).expanduser() if cfg.ckpt_path else None
    if ckpt is not None and out.exists() and ckpt.exists() and out.samefile(ckpt):
        raise TagrankError(f"out={cfg.out!r} is the checkpoint it exports: name another file")
    check_writable(out, "out")  # before the model is loaded and traced
    check_writable(out.with_name(out.name + ".json"), "out")  # its sidecar: not a folder either
    tagger = load_tagger(cfg)
    sidecar = export_tagger(tagger, cfg.format, out)
    print(f"wrote {out} ({cfg.format}: uint8 RGB [B, 3, {tagger.image_size}, {tagger.image_size}] -> top "
          f"{tagger.model.top_k} tag ids and scores) and {sidecar} (tag names, preprocessing)")
    return out


main = command("export", export)


if __name__ == "__main__":
    main()
