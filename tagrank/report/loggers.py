"""Table 1, its curves and figures as one small "aggregate" run of the logger the trial runs used, so
they sit beside those runs in W&B or TensorBoard."""

from __future__ import annotations

import math
from pathlib import Path

from tagrank.dashboard import log_aggregate_run
from tagrank.errors import TagrankError
from tagrank.report.stats import Row
from tagrank.report.tables import CSV_COLUMNS, CURVE_COLUMNS, curve_rows, table_rows


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
        summary = {}
        for r in rows:
            for key, value in (("ndcg_mean", r.ndcg), ("p_mean", r.p), ("ndcg_loo", r.ndcg_loo), ("p_loo", r.p_loo)):
                if value is not None and not math.isnan(value):  # the person has LOO columns only
                    summary[f"{r.method}/{key}"] = value
        log_aggregate_run(out_dir, f"table1-{data}", group or f"table1-{data}", {"data": data},
                          {"table1": (CSV_COLUMNS, table_rows(rows)), "curves": (CURVE_COLUMNS, curve_rows(rows))},
                          figures, summary)
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
