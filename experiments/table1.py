"""The paper's Table 1 and Figures 3-4 on one dataset, by one command.

    python experiments/table1.py data=synthetic seeds=3          # make table1
    python experiments/table1.py quick=true                       # make table1-quick: minutes on 2 CPU cores
    python experiments/table1.py data=pascal07 data.root=/path/VOC2007 logger=wandb
    python experiments/table1.py aggregate=logs/table1/synthetic/<time>   # re-aggregate finished runs

1. Runs every method x seed as Hydra multiruns of the real ``tagrank-train``
   (``tagrank-train -m model=svm,svm_rank,frequency seed=0,1,2 data=<data> hydra.sweep.dir=<sweep>/frozen``);
   the recurrent methods (lstm, naive_rnn) run as a second multirun into ``<sweep>/finetuned`` with
   their staged fine-tuning schedule (``finetune``, below), as in the paper: the SVMs are trained on
   the frozen CNN's features, the RNNs fine-tune it. Any other ``key=value`` argument
   (``trainer.max_epochs=5``, ``data.root=...``) is passed to every run.
2. Aggregates the run directories (``tagrank.report``) into ``<results>/<data>/``: ``table1.md``,
   ``table1.csv``, ``curves.csv``, ``fig3.png`` (NDCG@k and P@k against k) and ``fig4.png`` (test
   images with the ground truth, the LSTM's and the SVM's lists), ``report.html`` (every test photo
   with every method's list, sortable by NDCG and by the difference between two methods), and logs
   them to an "aggregate" run of the chosen logger (wandb: offline unless WANDB_MODE=online).

Settings (key=value): data (synthetic), seeds (3), methods (lstm,svm,svm_rank,naive_rnn,frequency),
quick (false), logger (csv | tensorboard | wandb), results (results), sweep_dir (default
``$TAGRANK_LOGS/table1/<data>/<time>``), aggregate (a finished sweep directory: skip step 1),
finetune (the recurrent methods' schedule as an experiment name; ``auto``: ``synthetic_finetune`` on
data=synthetic, none in quick mode, otherwise the model config's own ``finetune_after_steps`` (the
paper's 7500) with the passed trainer settings; ``none``: frozen backbone for every method).
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

from tagrank.errors import TagrankError

log = logging.getLogger("tagrank")

SETTINGS = {"data": "synthetic", "seeds": "3", "methods": "lstm,svm,svm_rank,naive_rnn,frequency", "quick": "false",
            "logger": "csv", "results": "results", "sweep_dir": "", "aggregate": "", "finetune": "auto"}
RECURRENT = ("lstm", "naive_rnn")  # the methods that fine-tune the backbone

# Quick mode: a small synthetic set at 64 px and short schedules; a smoke run of the whole pipeline.
QUICK = ["data.n_train=1000", "data.n_val=200", "data.n_test=400", "data.image_size=64", "backbone.image_size=64",
         "trainer.max_epochs=8"]


def parse(argv: list[str]) -> tuple[dict[str, str], list[str]]:
    settings, passthrough = dict(SETTINGS), []
    for arg in argv:
        key, sep, value = arg.partition("=")
        if not sep:
            raise TagrankError(f"{arg!r}: arguments are key=value (settings: {', '.join(SETTINGS)})")
        if key in SETTINGS:
            settings[key] = value
        else:
            passthrough.append(arg)
    if settings["quick"].lower() not in ("true", "false"):
        raise TagrankError(f"quick={settings['quick']!r}: expected true or false")
    if settings["quick"].lower() == "true" and settings["data"] != "synthetic":
        raise TagrankError("quick=true shrinks the synthetic data; it does not apply to data=" + settings["data"])
    return settings, passthrough


def wandb_group(data: str, sweep_dir: Path) -> str:
    """The W&B group of one table: its trial runs and its aggregate run."""
    return f"table1-{data}-{Path(sweep_dir).name}"


def rnn_overrides(settings: dict[str, str]) -> list[str]:
    """The recurrent methods' schedule: an experiment config, or their model config's own."""
    choice = settings["finetune"]
    if choice == "auto":
        choice = "synthetic_finetune" if settings["data"] == "synthetic" and settings["quick"].lower() != "true" else ""
    if choice == "none":
        return ["model.finetune_after_steps=0"]
    return [f"experiment={choice}"] if choice else []


def launch(settings: dict[str, str], passthrough: list[str], sweep_dir: Path) -> None:
    """The methods x seeds as Hydra multiruns of tagrank-train (the basic launcher: one after another):
    one for the methods on frozen features, one for the fine-tuned recurrent methods."""
    exe = Path(sys.executable).parent / "tagrank-train"
    train = str(exe) if exe.is_file() else shutil.which("tagrank-train")
    if not train:
        raise TagrankError("tagrank-train is not installed (pip install -e .)")
    quick = settings["quick"].lower() == "true"
    seeds = ",".join(str(s) for s in range(int(settings["seeds"])))
    methods = [m for m in settings["methods"].split(",") if m]
    groups = {"frozen": ([m for m in methods if m not in RECURRENT], []),
              "finetuned": ([m for m in methods if m in RECURRENT], rnn_overrides(settings))}
    for group, (members, extra) in groups.items():
        if not members:
            continue
        cmd = [train, "-m", f"model={','.join(members)}", f"seed={seeds}", f"data={settings['data']}",
               f"logger={settings['logger']}", f"hydra.sweep.dir={sweep_dir / group}", "trainer.enable_progress_bar=false"]
        if settings["logger"] == "wandb":
            cmd.append(f"logger.wandb.group={wandb_group(settings['data'], sweep_dir)}")
        cmd += extra + (QUICK if quick else []) + passthrough
        print("+ " + " ".join(cmd), flush=True)
        start = time.time()
        proc = subprocess.run(cmd)
        if proc.returncode != 0:
            raise TagrankError(f"the multirun failed (exit status {proc.returncode}); finished runs are in {sweep_dir}")
        print(f"multirun ({group}) finished in {time.time() - start:.0f} s", flush=True)


def report(sweep_dir: Path, out_dir: Path, logger: str) -> str:
    # tagrank.report imports torch: after the arguments are checked
    from tagrank.report import figures, html, loggers, runs, stats, tables

    found = runs.load_runs(sweep_dir)
    data = found[0].data
    scores = stats.image_scores(found)
    rows = stats.summarise(scores)
    md = tables.write_table(rows, out_dir, data)
    written = {"fig3": figures.plot_curves(rows, out_dir / "fig3.png", data)}
    images = runs.image_files(found[0])
    examples = figures.pick_examples(found, images)
    if examples:
        written["fig4"] = figures.plot_examples(examples, out_dir / "fig4.png",
                                                title=f"{data}: ground truth and predicted lists (green: in the ground truth)")
    loggers.log_aggregate(logger, out_dir, rows, data, written, md, group=wandb_group(data, sweep_dir))
    seeds = "/".join(sorted({str(len(rs)) for rs in scores.runs.values()}))
    html.write_report(out_dir / "report.html", scores, rows, images, title=f"Table 1 on {data}",
                      intro=f"{len(scores.runs)} methods x {seeds} seeds on the {len(scores.images)} test photos of "
                            f"{data} (runs: {sweep_dir}).", figures=written)
    return md


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        settings, passthrough = parse(argv)
        if settings["aggregate"]:
            sweep_dir = Path(settings["aggregate"])
        else:
            stamp = datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
            default = Path(os.environ.get("TAGRANK_LOGS", "logs")) / "table1" / settings["data"] / stamp
            sweep_dir = Path(settings["sweep_dir"] or default).resolve()
            launch(settings, passthrough, sweep_dir)
        from tagrank.report.runs import load_runs

        data = load_runs(sweep_dir)[0].data
        out_dir = Path(settings["results"]) / data
        md = report(sweep_dir, out_dir, settings["logger"])
    except TagrankError as err:
        print(f"table1: error: {err}", file=sys.stderr)
        return 2
    print(md)
    print(f"written: {out_dir}/table1.md, table1.csv, curves.csv, fig3.png, fig4.png, report.html (runs: {sweep_dir})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
