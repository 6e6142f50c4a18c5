"""Reading finished runs: what ``tagrank-train`` (or ``tagrank-eval``) left in a run directory.

A training run directory holds ``.hydra/config.yaml`` (seed, model settings), ``.hydra/hydra.yaml``
(which ``model=`` and ``data=`` options were chosen), ``metrics.json`` (NDCG@k, P@k of the test split)
and ``predictions.jsonl`` (per test image, the ground truth and the predicted list, as tag names).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from tagrank.errors import TagrankError


@dataclass
class Run:
    """One finished run: one method, one seed, its test metrics and predicted lists."""

    method: str
    seed: int
    data: str
    metrics: dict[str, float]
    predictions: list[dict[str, Any]]
    path: Path | None = None
    top_k: int = 10
    relevance: str = "linear"


def read_results(run_dir: Path) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """``metrics.json``'s metrics and ``predictions.jsonl``'s records."""
    path = run_dir / "metrics.json"
    try:  # a run killed while writing (or a file edited by hand) is one line naming it, not a traceback
        metrics = json.loads(path.read_text(encoding="utf-8-sig"))["metrics"]
        path = run_dir / "predictions.jsonl"
        with open(path, encoding="utf-8-sig") as f:
            predictions = [json.loads(line) for line in f if line.strip()]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise TagrankError(f"{path}: not a complete tagrank results file ({type(err).__name__}: {err}); rerun this "
                           "run, or remove its folder to aggregate without it") from err
    return metrics, predictions


def load_run(run_dir: Path) -> Run:
    run_dir = Path(run_dir)
    for name in ("metrics.json", "predictions.jsonl", ".hydra/config.yaml", ".hydra/hydra.yaml"):
        if not (run_dir / name).is_file():
            raise TagrankError(f"{run_dir}: no {name} (did this run fail or stop before testing?); a run given again "
                               "goes beside it: remove this folder to aggregate without it")
    cfg = OmegaConf.load(run_dir / ".hydra/config.yaml")
    choices = OmegaConf.load(run_dir / ".hydra/hydra.yaml").hydra.runtime.choices
    metrics, predictions = read_results(run_dir)
    return Run(method=str(choices.model), seed=int(cfg.seed), data=str(choices.data), metrics=metrics,
               predictions=predictions, path=run_dir, top_k=int(cfg.model.get("top_k", 10)),
               relevance=str(cfg.model.get("relevance", "linear")))


def load_runs(sweep_dir: Path) -> list[Run]:
    """Every run under a sweep directory: a multirun's numbered job folders, also one level down
    (experiments/table1.py writes ``<sweep>/frozen/N`` and ``<sweep>/finetuned/N``)."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise TagrankError(f"{sweep_dir}: not a directory (expected a finished sweep directory)")
    jobs = sorted({p.parent for pattern in ("*/.hydra", "*/*/.hydra") for p in sweep_dir.glob(pattern) if p.is_dir()})
    if not jobs:
        raise TagrankError(f"{sweep_dir}: no run directories (with .hydra/) found")
    return [load_run(p) for p in jobs]


def checkpoint_run(out_dir: Path, ckpt: Path, model: Any, dm: Any) -> Run:
    """The run ``tagrank-eval`` just wrote into ``out_dir``, named after the training run that wrote the
    checkpoint (``<run>/.hydra``: its ``model=`` and ``data=`` choices, its seed); without that record,
    after the model's module (``tagrank.models.lstm`` -> ``lstm``) and the dataset's converter."""
    metrics, predictions = read_results(Path(out_dir))
    train_dir = Path(ckpt).parent.parent / ".hydra"
    method = type(model).__module__.rsplit(".", 1)[-1]
    data = type(dm.source).__module__.rsplit(".", 1)[-1]
    seed = 0
    if (train_dir / "hydra.yaml").is_file():
        choices = OmegaConf.load(train_dir / "hydra.yaml").hydra.runtime.choices
        method, data = str(choices.get("model") or method), str(choices.get("data") or data)
    if (train_dir / "config.yaml").is_file():
        seed = int(OmegaConf.load(train_dir / "config.yaml").get("seed", 0))
    return Run(method=method, seed=seed, data=data, metrics=metrics, predictions=predictions, path=Path(out_dir),
               top_k=int(model.top_k), relevance=str(model.test_metrics.relevance))


def image_paths(dm: Any) -> dict[str, Path]:
    """Record image -> file, from a set-up :class:`~tagrank.data.datamodule.RankedTagDataModule`."""
    return {rec.image: Path(path) for rec, path in zip(dm.records, dm.paths)}


def image_files(run: Run) -> dict[str, Path]:
    """Record image -> file for a run's dataset: the run's own config rebuilds its data module."""
    from tagrank.pipeline import build_data

    cfg = OmegaConf.load(run.path / ".hydra/config.yaml")
    cfg.paths.output_dir = str(run.path)  # the saved value refers to Hydra's runtime, absent here
    return image_paths(build_data(cfg))
