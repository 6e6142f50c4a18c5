"""Table 1 as files: ``table1.md`` for people, ``table1.csv`` and ``curves.csv`` for programs."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any

from tagrank.files import atomic_write_text
from tagrank.report.methods import REFERENCE, label
from tagrank.report.stats import PERSON, Row


def _pm(mean: float, std: float) -> str:
    return f"{mean:.4f} ± {std:.4f}" if not math.isnan(std) else f"{mean:.4f}"


def _ci(ci: tuple[float, float] | None) -> str:
    return f"[{ci[0]:.4f}, {ci[1]:.4f}]" if ci else "–"


def seed_counts(rows: list) -> str:
    """How many seeds the rows average: "3 seeds", "1 seed", or "1/3 seeds" where methods differ (the
    deterministic ones run once)."""
    counts = sorted({len(r.seeds) for r in rows if r.method != PERSON})
    return f"{'/'.join(map(str, counts))} seed{'s' * (counts != [1])}"


def interval_note(rows: list[Row]) -> str:
    """What the intervals are, in words, for the table's header (and the HTML report's)."""
    note = (f"95% CI: two-level percentile bootstrap ({rows[0].n_boot} replicates): each replicate resamples the "
            "test images with replacement and, for each method independently, its seeds with replacement; the "
            "statistic is the mean over the resampled seeds' runs of the mean over the resampled images, so an "
            "interval carries the seed-to-seed variance as well as the images'.")
    if any(r.delta is not None for r in rows):
        note += (" The difference column is paired: both methods get the same resampled images, each its own "
                 "resampled seeds.")
    methods = [r for r in rows if r.method != PERSON]
    single = [r.label for r in methods if len(r.seeds) == 1]
    if single and len(single) == len(methods):
        note += (" Every method has one seed here, so the intervals are the bootstrap over test images alone "
                 "and carry no seed-to-seed variance.")
    elif single:
        note += (f" {', '.join(single)}: one seed, so {'its interval is' if len(single) == 1 else 'their intervals are'}"
                 " the bootstrap over test images alone.")
    return note + loo_note(rows)


def loo_note(rows: list[Row]) -> str:
    """What the LOO columns and the person's row are, where the table has them."""
    if not any(r.ndcg_loo is not None for r in rows):
        return ""
    return (f" LOO (leave one annotator out): on the {rows[0].n_loo_images} test images with two or more annotators' "
            "lists, each list in turn is held out and the merge of the others (mean rank) is the ground truth; a "
            "method's list is scored against each such merge and the scores averaged. The person's row scores each "
            "held-out list itself against the same merge (LOO columns only; its interval resamples the images).")


def table_cells(rows: list[Row], reference: str = REFERENCE) -> tuple[list[str], list[list[str]]]:
    """Table 1 as text cells (header, one list per method): the markdown and the HTML report show these."""
    has_paper = any(r.paper for r in rows)
    has_delta = any(r.delta is not None for r in rows)  # no column without the reference method
    head = ["Method", "NDCG", "NDCG 95% CI", "P", "P 95% CI"]
    head += [f"NDCG − {label(reference)} [95% CI]"] if has_delta else []
    head += ["paper NDCG", "paper P"] if has_paper else []
    has_loo = any(r.ndcg_loo is not None for r in rows)
    head += ["NDCG (LOO)", "NDCG (LOO) 95% CI", "P (LOO)", "P (LOO) 95% CI"] if has_loo else []
    cells = []
    for r in rows:
        if r.method == PERSON:  # LOO columns only
            line = [r.label, "–", "–", "–", "–"] + ["–"] * has_delta + ["–", "–"] * has_paper
        else:
            line = [r.label, _pm(r.ndcg, r.ndcg_std), _ci(r.ndcg_ci), _pm(r.p, r.p_std), _ci(r.p_ci)]
            if has_delta:
                line.append("–" if r.delta is None else f"{r.delta:+.4f} {_ci(r.delta_ci)}")
            if has_paper:
                line += [f"{r.paper[0]:.4f}", f"{r.paper[1]:.4f}"] if r.paper else ["–", "–"]
        if has_loo:
            line += (["–"] * 4 if r.ndcg_loo is None else
                     [_pm(r.ndcg_loo, r.ndcg_loo_std), _ci(r.ndcg_loo_ci), _pm(r.p_loo, r.p_loo_std), _ci(r.p_loo_ci)])
        cells.append(line)
    return head, cells


def table_markdown(rows: list[Row], data: str, reference: str = REFERENCE) -> str:
    head, cells = table_cells(rows, reference)
    lines = [f"# Table 1 on `{data}`", "",
             f"Mean over k = 1..{len(rows[0].ndcg_at)} of NDCG@k and P@k on the test split ({rows[0].n_images} images): "
             f"mean ± std over {seed_counts(rows)}. " + interval_note(rows),
             "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(line) + " |" for line in cells]
    return "\n".join(lines) + "\n"


CSV_COLUMNS = ["method", "label", "seeds", "n_images", "ndcg_mean", "ndcg_std", "ndcg_ci_low", "ndcg_ci_high",
               "p_mean", "p_std", "p_ci_low", "p_ci_high", "delta_ndcg", "delta_ci_low", "delta_ci_high",
               "paper_ndcg", "paper_p", "ndcg_loo", "ndcg_loo_std", "ndcg_loo_ci_low", "ndcg_loo_ci_high", "p_loo",
               "p_loo_std", "p_loo_ci_low", "p_loo_ci_high"]
CURVE_COLUMNS = ["method", "k", "ndcg", "ndcg_std", "p", "p_std"]


def table_rows(rows: list[Row]) -> list[list[Any]]:
    """Table 1 as plain rows in :data:`CSV_COLUMNS` order (also what the wandb Table gets)."""
    def num(x: float | None) -> float | None:
        return None if x is None or math.isnan(x) else round(float(x), 6)

    out = []
    for r in rows:
        d_lo, d_hi = r.delta_ci or (None, None)
        n_lo, n_hi = r.ndcg_ci or (None, None)
        p_lo, p_hi = r.p_ci or (None, None)
        nl_lo, nl_hi = r.ndcg_loo_ci or (None, None)
        pl_lo, pl_hi = r.p_loo_ci or (None, None)
        out.append([r.method, r.label, len(r.seeds), r.n_images if r.method != PERSON else r.n_loo_images,
                    num(r.ndcg), num(r.ndcg_std), num(n_lo), num(n_hi), num(r.p), num(r.p_std), num(p_lo), num(p_hi),
                    num(r.delta), num(d_lo), num(d_hi), r.paper[0] if r.paper else None,
                    r.paper[1] if r.paper else None, num(r.ndcg_loo), num(r.ndcg_loo_std), num(nl_lo), num(nl_hi),
                    num(r.p_loo), num(r.p_loo_std), num(pl_lo), num(pl_hi)])
    return out


def curve_rows(rows: list[Row]) -> list[list[Any]]:
    """Fig. 3's numbers in :data:`CURVE_COLUMNS` order: (method, k, NDCG@k mean, std, P@k mean, std)."""
    return [[r.method, k, r.ndcg_at[k - 1], r.ndcg_at_std[k - 1], r.p_at[k - 1], r.p_at_std[k - 1]]
            for r in rows for k in range(1, len(r.ndcg_at) + 1)]


def _write_csv(path: Path, header: list[str], rows: list[list[Any]]) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows([["" if v is None or (isinstance(v, float) and math.isnan(v)) else v for v in row] for row in rows])
    atomic_write_text(path, buf.getvalue())


def write_table(rows: list[Row], out_dir: Path, data: str, reference: str = REFERENCE) -> str:
    """``table1.md``, ``table1.csv`` and ``curves.csv`` in ``out_dir``; returns the markdown."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    md = table_markdown(rows, data, reference)
    atomic_write_text(out_dir / "table1.md", md)
    _write_csv(out_dir / "table1.csv", CSV_COLUMNS, table_rows(rows))
    _write_csv(out_dir / "curves.csv", CURVE_COLUMNS, curve_rows(rows))
    return md
