"""The paper's figures with matplotlib's Agg backend (no display needed): Fig. 3, NDCG@k and P@k
against k, and Fig. 4, test images with the ground truth and predicted lists."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tagrank.errors import TagrankError
from tagrank.report.methods import REFERENCE, label
from tagrank.report.runs import Run
from tagrank.report.stats import PERSON, Row


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_curves(rows: list[Row], path: Path, data: str = "") -> Path:
    """Fig. 3 (:func:`curves_figure`) saved as a PNG."""
    plt = _pyplot()
    fig = curves_figure(rows, data)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


def curves_figure(rows: list[Row], data: str = ""):
    """Fig. 3: NDCG@k and P@k against k, one line per method (band: +- std over seeds); where the data has
    several annotators' lists, a person (one caption against the merge of the others, leave one annotator
    out) as a dashed black line: the ceiling the methods are measured against."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, name in zip(axes, ("ndcg", "p")):
        for r in rows:
            mean = np.array(getattr(r, f"{name}_at"))
            std = np.nan_to_num(np.array(getattr(r, f"{name}_at_std")))
            ks = np.arange(1, len(mean) + 1)
            if r.method == PERSON:
                ax.plot(ks, mean, linestyle="--", color="black", linewidth=1.5, label=f"{r.label}, LOO")
                continue
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
    return fig


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
                    lists={label(m): preds[m][candidates[i]]["predicted"] for m in chosen}) for i in picked]


def plot_examples(examples: list[Example], path: Path, columns: int = 4, title: str = "") -> Path:
    """Fig. 4: a grid of test images; under each, the ground-truth list beside each method's list (as
    long as the ground truth, at most 5 tags); a predicted tag is green if it is in the ground truth, red
    if not."""
    plt = _pyplot()
    from tagrank.data.images import load_image

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
        ax.imshow(load_image(Path(ex.image)))  # upright, as the model saw it
        # The axes keep the whole cell whatever the image's shape (a portrait photo is centred in it),
        # so the text columns below have the same width under every image and do not overlap.
        ax.set_adjustable("datalim")
        ax.axis("off")
        ax.set_title(Path(ex.image).name, fontsize=7, color="0.4", pad=2)
        n_show = min(max(len(ex.truth), 1), 5)
        cols = [("ground truth", [(t, "black") for t in ex.truth[:n_show]])]
        cols += [(name, [(t, "tab:green" if t in ex.truth else "tab:red") for t in tags[:n_show]])
                 for name, tags in ex.lists.items()]
        width = 1.0 / len(cols)
        for c, (name, words) in enumerate(cols):
            x = c * width
            ax.text(x, -0.03, name, transform=ax.transAxes, fontsize=7.5, fontweight="bold", va="top")
            for j, (tag, colour) in enumerate(words):
                short = tag if len(tag) <= 14 else tag[:13] + "…"
                ax.text(x, -0.03 - (j + 1) * line, f"{j + 1}. {short}", transform=ax.transAxes, fontsize=7,
                        color=colour, va="top")
    if title:
        fig.suptitle(title, fontsize=11)
    fig.savefig(path, dpi=110, bbox_inches="tight", pad_inches=0.1)
    plt.close(fig)
    return Path(path)
