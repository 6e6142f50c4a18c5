"""The paper's Table 1 and Figures 3-4 from a set of finished runs (one per method and seed).

Every run directory written by ``tagrank-train`` holds what is needed: ``.hydra/config.yaml`` (seed,
model settings), ``.hydra/hydra.yaml`` (which ``model=`` and ``data=`` options were chosen),
``metrics.json`` (NDCG@k, P@k of the test split) and ``predictions.jsonl`` (per test image, the ground
truth and the predicted list, as tag names). From them:

- :func:`summarise`: per method, the mean over k = 1..K of NDCG@k and P@k, as mean +- std over seeds
  (sample std) and a 95% bootstrap confidence interval over test images (each image's score averaged
  over seeds, images resampled with replacement), and the paired bootstrap interval of each method's
  NDCG minus the reference method's (the LSTM): the question "is it really better here?".
- :func:`write_table`: ``table1.md``, ``table1.csv`` and ``curves.csv``, with the paper's numbers beside
  ours where the paper reports the dataset.
- :func:`plot_curves` (Fig. 3) and :func:`plot_examples` (Fig. 4), with matplotlib's Agg backend.
- :func:`log_aggregate`: the same table, curves and figures to a small "aggregate" logger run.

``experiments/table1.py`` launches the runs (Hydra multirun of ``tagrank-train``) and calls these.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import OmegaConf

from tagrank.errors import TagrankError
from tagrank.metrics import ndcg_at_k, precision_at_k

log = logging.getLogger("tagrank")

# The paper's Table 1 (Yan, Wang, Liao, BMVC 2016): mean over k = 1..10 of NDCG@k and P@k.
PAPER = {
    "pascal07": {"svm": (0.6698, 0.4631), "svm_rank": (0.6731, 0.4471), "naive_rnn": (0.6367, 0.4056),
                 "lstm": (0.7061, 0.5081)},
    "labelme": {"svm": (0.4650, 0.5277), "svm_rank": (0.4715, 0.5172), "naive_rnn": (0.4204, 0.5048),
                "lstm": (0.4804, 0.5463)},
}
LABELS = {"frequency": "Frequency prior", "svm": "SVM", "svm_rank": "SVM-rank", "naive_rnn": "Naive-RNN",
          "lstm": "Ours (LSTM)"}
ORDER = ["frequency", "svm", "svm_rank", "naive_rnn", "lstm"]  # the paper's row order, the floor first
REFERENCE = "lstm"


@dataclass
class Run:
    """One finished ``tagrank-train`` run."""

    method: str
    seed: int
    data: str
    metrics: dict[str, float]
    predictions: list[dict[str, Any]]
    path: Path | None = None
    top_k: int = 10
    relevance: str = "linear"


@dataclass
class Row:
    """One method's line of Table 1 (all numbers are means over k = 1..K unless named @k)."""

    method: str
    label: str
    seeds: list[int]
    n_images: int
    ndcg: float
    ndcg_std: float
    ndcg_ci: tuple[float, float]
    p: float
    p_std: float
    p_ci: tuple[float, float]
    delta: float | None = None  # NDCG minus the reference method's, on the same images
    delta_ci: tuple[float, float] | None = None
    paper: tuple[float, float] | None = None
    ndcg_at: list[float] = field(default_factory=list)  # mean over seeds of NDCG@k, k = 1..K
    ndcg_at_std: list[float] = field(default_factory=list)
    p_at: list[float] = field(default_factory=list)
    p_at_std: list[float] = field(default_factory=list)


# -- reading runs --------------------------------------------------------------------------------
def load_run(run_dir: Path) -> Run:
    run_dir = Path(run_dir)
    for name in ("metrics.json", "predictions.jsonl", ".hydra/config.yaml", ".hydra/hydra.yaml"):
        if not (run_dir / name).is_file():
            raise TagrankError(f"{run_dir}: no {name} (did this run fail or stop before testing?)")
    cfg = OmegaConf.load(run_dir / ".hydra/config.yaml")
    choices = OmegaConf.load(run_dir / ".hydra/hydra.yaml").hydra.runtime.choices
    metrics = json.loads((run_dir / "metrics.json").read_text())["metrics"]
    with open(run_dir / "predictions.jsonl") as f:
        predictions = [json.loads(line) for line in f if line.strip()]
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


# -- statistics -----------------------------------------------------------------------------------
def per_image_scores(run: Run) -> dict[str, tuple[float, float]]:
    """Per test image, its (mean over k of NDCG@k, mean over k of P@k); empty ground truths left out."""
    out = {}
    ks = range(1, run.top_k + 1)
    for rec in run.predictions:
        truth, pred = rec["truth"], rec["predicted"]
        if not truth:
            continue
        out[rec["image"]] = (float(np.mean([ndcg_at_k(pred, truth, k, run.relevance) for k in ks])),
                             float(np.mean([precision_at_k(pred, truth, k) for k in ks])))
    return out


def bootstrap_ci(values: np.ndarray, n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` (resampled with replacement)."""
    values = np.asarray(values, dtype=np.float64)
    if len(values) == 0:
        return (math.nan, math.nan)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(values), size=(n_boot, len(values)))
    means = values[idx].mean(axis=1)
    alpha = (1.0 - level) / 2
    return (float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha)))


def _std(values: list[float]) -> float:
    return float(np.std(values, ddof=1)) if len(values) > 1 else math.nan


def summarise(runs: list[Run], reference: str = REFERENCE, n_boot: int = 2000, seed: int = 0) -> list[Row]:
    """One :class:`Row` per method, in the paper's order (methods it does not know come after)."""
    if not runs:
        raise TagrankError("no runs to summarise")
    data = {r.data for r in runs}
    if len(data) > 1:
        raise TagrankError(f"the runs are on different datasets {sorted(data)}; summarise one dataset at a time")
    paper = PAPER.get(data.pop(), {})
    by_method: dict[str, list[Run]] = {}
    for r in sorted(runs, key=lambda r: r.seed):
        by_method.setdefault(r.method, []).append(r)
    scores = {m: [per_image_scores(r) for r in rs] for m, rs in by_method.items()}
    for m, rs in by_method.items():  # the recomputed per-image scores must reproduce each run's metrics
        for r, s in zip(rs, scores[m]):
            mean = float(np.mean([v[0] for v in s.values()])) if s else math.nan
            if abs(mean - float(r.metrics["ndcg_mean"])) > 1e-3:
                raise TagrankError(f"{r.path}: predictions.jsonl gives NDCG {mean:.4f} but metrics.json says "
                                   f"{float(r.metrics['ndcg_mean']):.4f}")
    images = sorted(set.intersection(*(set(s) for ss in scores.values() for s in ss)))
    if not images:
        raise TagrankError("the runs share no test image")

    def seed_mean(m: str, which: int) -> np.ndarray:  # [n_images]: each image's score averaged over seeds
        return np.mean([[s[img][which] for img in images] for s in scores[m]], axis=0)

    ref_ndcg = seed_mean(reference, 0) if reference in scores else None
    rows = []
    for m in sorted(by_method, key=lambda m: (ORDER.index(m) if m in ORDER else len(ORDER), m)):
        rs = by_method[m]
        k_max = rs[0].top_k
        ndcg, prec = seed_mean(m, 0), seed_mean(m, 1)
        row = Row(method=m, label=LABELS.get(m, m), seeds=[r.seed for r in rs], n_images=len(images),
                  ndcg=float(np.mean([r.metrics["ndcg_mean"] for r in rs])),
                  ndcg_std=_std([float(r.metrics["ndcg_mean"]) for r in rs]),
                  ndcg_ci=bootstrap_ci(ndcg, n_boot, seed),
                  p=float(np.mean([r.metrics["p_mean"] for r in rs])),
                  p_std=_std([float(r.metrics["p_mean"]) for r in rs]),
                  p_ci=bootstrap_ci(prec, n_boot, seed), paper=paper.get(m))
        for name, mean_at, std_at in (("ndcg", row.ndcg_at, row.ndcg_at_std), ("p", row.p_at, row.p_at_std)):
            for k in range(1, k_max + 1):
                vals = [float(r.metrics[f"{name}@{k}"]) for r in rs]
                mean_at.append(float(np.mean(vals)))
                std_at.append(_std(vals))
        if ref_ndcg is not None and m != reference:
            diff = ndcg - ref_ndcg
            row.delta, row.delta_ci = float(diff.mean()), bootstrap_ci(diff, n_boot, seed)
        rows.append(row)
    return rows


# -- writing --------------------------------------------------------------------------------------
def _pm(mean: float, std: float) -> str:
    return f"{mean:.4f} ± {std:.4f}" if not math.isnan(std) else f"{mean:.4f}"


def _ci(ci: tuple[float, float] | None) -> str:
    return f"[{ci[0]:.4f}, {ci[1]:.4f}]" if ci else "–"


def table_markdown(rows: list[Row], data: str, reference: str = REFERENCE) -> str:
    seeds = sorted({len(r.seeds) for r in rows})
    n_images = rows[0].n_images
    has_paper = any(r.paper for r in rows)
    head = ["Method", "NDCG", "NDCG 95% CI", "P", "P 95% CI", f"NDCG − {LABELS.get(reference, reference)} [95% CI]"]
    if has_paper:
        head += ["paper NDCG", "paper P"]
    lines = [f"# Table 1 on `{data}`", "",
             f"Mean over k = 1..{len(rows[0].ndcg_at)} of NDCG@k and P@k on the test split ({n_images} images): "
             f"mean ± std over {'/'.join(map(str, seeds))} seeds; 95% CI: bootstrap over test images of the "
             "seed-averaged per-image score (2000 resamples); the difference column is paired, image by image.",
             "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        delta = "–" if r.delta is None else f"{r.delta:+.4f} {_ci(r.delta_ci)}"
        cells = [r.label, _pm(r.ndcg, r.ndcg_std), _ci(r.ndcg_ci), _pm(r.p, r.p_std), _ci(r.p_ci), delta]
        if has_paper:
            cells += [f"{r.paper[0]:.4f}", f"{r.paper[1]:.4f}"] if r.paper else ["–", "–"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


CSV_COLUMNS = ["method", "label", "seeds", "n_images", "ndcg_mean", "ndcg_std", "ndcg_ci_low", "ndcg_ci_high",
               "p_mean", "p_std", "p_ci_low", "p_ci_high", "delta_ndcg", "delta_ci_low", "delta_ci_high",
               "paper_ndcg", "paper_p"]


def table_rows(rows: list[Row]) -> list[list[Any]]:
    """Table 1 as plain rows in :data:`CSV_COLUMNS` order (also what the wandb Table gets)."""
    def num(x: float | None) -> float | None:
        return None if x is None or math.isnan(x) else round(float(x), 6)

    out = []
    for r in rows:
        d_lo, d_hi = r.delta_ci or (None, None)
        out.append([r.method, r.label, len(r.seeds), r.n_images, num(r.ndcg), num(r.ndcg_std), num(r.ndcg_ci[0]),
                    num(r.ndcg_ci[1]), num(r.p), num(r.p_std), num(r.p_ci[0]), num(r.p_ci[1]), num(r.delta),
                    num(d_lo), num(d_hi), r.paper[0] if r.paper else None, r.paper[1] if r.paper else None])
    return out


def curve_rows(rows: list[Row]) -> list[list[Any]]:
    """Fig. 3's numbers: (method, k, NDCG@k mean, std, P@k mean, std)."""
    return [[r.method, k, r.ndcg_at[k - 1], r.ndcg_at_std[k - 1], r.p_at[k - 1], r.p_at_std[k - 1]]
            for r in rows for k in range(1, len(r.ndcg_at) + 1)]


def _write_csv(path: Path, header: list[str], rows: list[list[Any]]) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows([["" if v is None or (isinstance(v, float) and math.isnan(v)) else v for v in row] for row in rows])
    path.write_text(buf.getvalue())


def write_table(rows: list[Row], out_dir: Path, data: str) -> str:
    """``table1.md``, ``table1.csv`` and ``curves.csv`` in ``out_dir``; returns the markdown."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    md = table_markdown(rows, data)
    (out_dir / "table1.md").write_text(md)
    _write_csv(out_dir / "table1.csv", CSV_COLUMNS, table_rows(rows))
    _write_csv(out_dir / "curves.csv", ["method", "k", "ndcg", "ndcg_std", "p", "p_std"], curve_rows(rows))
    return md


# -- figures --------------------------------------------------------------------------------------
def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_curves(rows: list[Row], path: Path, data: str = "") -> Path:
    """Fig. 3: NDCG@k and P@k against k, one line per method (band: +- std over seeds)."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, name in zip(axes, ("ndcg", "p")):
        for r in rows:
            mean = np.array(getattr(r, f"{name}_at"))
            std = np.nan_to_num(np.array(getattr(r, f"{name}_at_std")))
            ks = np.arange(1, len(mean) + 1)
            style = {"linewidth": 2.4} if r.method == REFERENCE else {"linewidth": 1.5}
            line, = ax.plot(ks, mean, marker="o", markersize=3.5, label=r.label, **style)
            ax.fill_between(ks, mean - std, mean + std, color=line.get_color(), alpha=0.15, linewidth=0)
        ax.set_xlabel("k")
        ax.set_ylabel("NDCG@k" if name == "ndcg" else "P@k")
        ax.set_xticks(range(1, len(rows[0].ndcg_at) + 1))
        ax.grid(alpha=0.3)
    axes[0].legend(loc="lower right", fontsize=9)
    seeds = max(len(r.seeds) for r in rows)
    fig.suptitle(f"{data}: ranking quality against list length (mean over {seeds} seed{'s' * (seeds > 1)})" if data
                 else "ranking quality against list length")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


@dataclass
class Example:
    """One test image of Fig. 4 with its ground truth and each shown method's list."""

    image: Path
    truth: list[str]
    lists: dict[str, list[str]]  # label -> predicted tags, best first


def pick_examples(runs: list[Run], image_root: dict[str, Path], methods: tuple[str, ...] = ("lstm", "svm"),
                  n: int = 8, seed: int = 0) -> list[Example]:
    """``n`` test images (a fixed random choice among those with >= 2 ground-truth tags), with the lists of
    ``methods`` from their lowest-seed run. ``image_root`` maps a record's image to its file."""
    chosen = {m: min((r for r in runs if r.method == m), key=lambda r: r.seed) for m in methods
              if any(r.method == m for r in runs)}
    if not chosen:
        return []
    preds = {m: {p["image"]: p for p in r.predictions} for m, r in chosen.items()}
    first = next(iter(preds.values()))
    candidates = sorted(img for img, p in first.items() if len(p["truth"]) >= 2 and all(img in v for v in preds.values()))
    rng = np.random.default_rng(seed)
    picked = sorted(rng.choice(len(candidates), size=min(n, len(candidates)), replace=False)) if candidates else []
    return [Example(image=image_root[candidates[i]], truth=first[candidates[i]]["truth"],
                    lists={LABELS.get(m, m): preds[m][candidates[i]]["predicted"] for m in chosen}) for i in picked]


def plot_examples(examples: list[Example], path: Path, columns: int = 4, title: str = "") -> Path:
    """Fig. 4: a grid of test images; under each, the ground-truth list beside each method's list (as
    long as the ground truth, at most 5 tags); a predicted tag is green if it is in the ground truth, red
    if not."""
    plt = _pyplot()
    from PIL import Image

    if not examples:
        raise TagrankError("no example images to plot")
    n_rows = math.ceil(len(examples) / columns)
    n_lines = 1 + min(max(len(e.truth) for e in examples), 5)  # header + tags
    line = 0.085  # of an image's height
    fig = plt.figure(figsize=(3.2 * columns, n_rows * 3.2 * (1 + line * (n_lines + 0.6))))
    grid = fig.add_gridspec(n_rows, columns, hspace=line * (n_lines + 0.8), wspace=0.06,
                            left=0.01, right=0.99, top=0.95 if title else 0.99, bottom=0.01)
    for i, ex in enumerate(examples):
        ax = fig.add_subplot(grid[i // columns, i % columns])
        with Image.open(ex.image) as im:
            ax.imshow(im.convert("RGB"))
        # The axes keep the whole cell whatever the image's shape (a portrait photo is centred in it),
        # so the text columns below have the same width under every image and do not overlap.
        ax.set_adjustable("datalim")
        ax.axis("off")
        ax.set_title(Path(ex.image).name, fontsize=7, color="0.4", pad=2)
        n_show = min(max(len(ex.truth), 1), 5)
        cols = [("ground truth", [(t, "black") for t in ex.truth[:n_show]])]
        cols += [(label, [(t, "tab:green" if t in ex.truth else "tab:red") for t in tags[:n_show]])
                 for label, tags in ex.lists.items()]
        width = 1.0 / len(cols)
        for c, (label, words) in enumerate(cols):
            x = c * width
            ax.text(x, -0.03, label, transform=ax.transAxes, fontsize=7.5, fontweight="bold", va="top")
            for j, (tag, colour) in enumerate(words):
                short = tag if len(tag) <= 14 else tag[:13] + "…"
                ax.text(x, -0.03 - (j + 1) * line, f"{j + 1}. {short}", transform=ax.transAxes, fontsize=7,
                        color=colour, va="top")
    if title:
        fig.suptitle(title, fontsize=11)
    fig.savefig(path, dpi=110, bbox_inches="tight", pad_inches=0.1)
    plt.close(fig)
    return Path(path)


def image_files(run: Run) -> dict[str, Path]:
    """Record image -> file for a run's dataset: the run's own config rebuilds its data module."""
    from tagrank.pipeline import build_data

    cfg = OmegaConf.load(run.path / ".hydra/config.yaml")
    cfg.paths.output_dir = str(run.path)  # the saved value refers to Hydra's runtime, absent here
    dm = build_data(cfg)
    return {rec.image: path for rec, path in zip(dm.records, dm.paths)}


# -- logging --------------------------------------------------------------------------------------
def log_aggregate(logger: str, out_dir: Path, rows: list[Row], data: str, figures: dict[str, Path],
                  markdown: str, group: str | None = None) -> None:
    """Log Table 1, the curves and the figures to a small "aggregate" run of ``logger``.

    ``wandb``: a run (offline unless ``WANDB_MODE=online``) in ``out_dir/wandb`` with a wandb Table of
    Table 1, one of the curves, and the figures as images, in W&B group ``group`` (the one the trial
    runs were given, so they sit together). ``tensorboard``: the markdown table as text,
    the curves as scalars against k, the figures as images in ``out_dir/tensorboard``. ``csv``: the
    files already written are the record; nothing more.
    """
    if logger == "wandb":
        import wandb

        run = wandb.init(project=os.environ.get("WANDB_PROJECT", "tagrank"), name=f"table1-{data}",
                         job_type="aggregate", group=group or f"table1-{data}", dir=str(out_dir),
                         mode=os.environ.get("WANDB_MODE", "offline"), config={"data": data})
        try:
            run.log({"table1": wandb.Table(columns=CSV_COLUMNS, data=table_rows(rows)),
                     "curves": wandb.Table(columns=["method", "k", "ndcg", "ndcg_std", "p", "p_std"],
                                           data=curve_rows(rows)),
                     **{name: wandb.Image(str(path)) for name, path in figures.items()}})
            for r in rows:
                run.summary[f"{r.method}/ndcg_mean"] = r.ndcg
                run.summary[f"{r.method}/p_mean"] = r.p
        finally:
            wandb.finish()
    elif logger == "tensorboard":
        from matplotlib.image import imread
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(Path(out_dir) / "tensorboard"))
        try:
            writer.add_text("table1", markdown)
            for method, k, ndcg, _, p, _ in curve_rows(rows):
                writer.add_scalar(f"{method}/ndcg@k", ndcg, k)
                writer.add_scalar(f"{method}/p@k", p, k)
            for name, path in figures.items():
                writer.add_image(name, imread(str(path))[..., :3], dataformats="HWC")
        finally:
            writer.close()
    elif logger not in ("csv", "none"):
        raise TagrankError(f"logger={logger!r}: the aggregate run supports csv, tensorboard and wandb")
