"""Issue 15's three ablations, by one command each (docs/results.md: Ablations).

    python experiments/ablations.py sweep=logs/table1/flickr8k/<time>     # set against order, which relevance
    python experiments/ablations.py orders=true data=flickr8k data.root=../shared/data/flickr8k seeds=1
    python experiments/ablations.py orders=true aggregate=logs/ablation_order/flickr8k/<time>   # re-aggregate

``sweep=<a Table 1 sweep directory>`` rescores its saved predictions (nothing is trained) and writes
``<results>/<data>/ablation_set_vs_order.md`` (each method's NDCG beside that of its found tags in the
human order: what ordering costs it) and ``ablation_relevance.md`` (Table 1's NDCG with ``linear``,
``inverse_log`` and ``binary`` relevance, and whether the methods' ranking changes).

``orders=true`` trains the paper's LSTM once per ``data.train_order`` (human, frequency, rare_first, random)
and seed, as one Hydra multirun of the real ``tagrank-train`` (``tagrank-train -m model=lstm
data.train_order=human,frequency,rare_first,random seed=0,... model.finetune_after_steps=0
hydra.sweep.dir=<sweep>/orders-N``), and writes ``<results>/<data>/ablation_order.md``: NDCG and P
(mean over k) per order, every run scored on the human order, each order against the human one on
the same images. The backbone stays frozen (features cached once, shared by every run): fine-tuning
four orders x seeds on 2 CPU cores would take hours (Table 1's fine-tuned LSTM runs alone take
~7 minutes each), and the question is about the recurrent head's training target. Any other
``key=value`` (``data.root=...``, ``trainer.max_steps=50``) goes to every run.

Settings: ``tagrank/conf/ablations.yaml`` (``train.yaml`` and sweep, results, orders, seeds, sweep_dir,
aggregate), composed by Hydra as tagrank's commands are, so a misspelt setting is refused before anything runs.
"""

from __future__ import annotations

import os
import shlex
import sys
from datetime import datetime
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig
from table1 import refuse_unused_with_aggregate, run_all, train_executable, unused

from tagrank.cli import command
from tagrank.config import PositiveInt, check_value
from tagrank.errors import TagrankError
from tagrank.files import atomic_write_text

SETTINGS = ("orders", "sweep", "results", "seeds", "sweep_dir", "aggregate")  # the rest is tagrank-train's
ORDERS = ("human", "frequency", "rare_first", "random")  # tagrank.data.datamodule.TrainOrder


def parse(cfg: DictConfig) -> list[str]:
    """The settings checked; returns the tagrank-train settings given, as written on the command line."""
    given, passthrough = [], []
    for arg in HydraConfig.get().overrides.task:
        (given if arg.partition("=")[0].lstrip("+~") in SETTINGS else passthrough).append(arg)
    check_value("orders", cfg.orders, bool)
    if cfg.orders and cfg.aggregate:
        refuse_unused_with_aggregate([a for a in given + passthrough if not a.startswith("orders=")],
                                     ("aggregate", "results"))
    if cfg.orders:
        if cfg.sweep:
            raise TagrankError("sweep= is for the Table 1 ablations, without orders=true")
        check_value("seeds", cfg.seeds, PositiveInt)
    elif not cfg.sweep:
        raise TagrankError("give sweep=<a Table 1 sweep directory>, or orders=true to train the order ablation")
    elif passthrough:
        raise TagrankError(f"{passthrough[0]!r} is not a setting of the Table 1 ablations (sweep, results); "
                           "training settings go with orders=true")
    return passthrough


def train_orders(cfg: DictConfig, passthrough: list[str]) -> Path:
    """The LSTM on each training order x seed, one multirun; returns its folder (only its runs are read)."""
    data = HydraConfig.get().runtime.choices["data"]
    stamp = datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    default = Path(os.environ.get("TAGRANK_LOGS", "logs")) / "ablation_order" / data / stamp
    sweep_dir = Path(cfg.sweep_dir or default).resolve()
    folder = sweep_dir / next(unused(sweep_dir, "orders"))
    seeds = ",".join(map(str, range(cfg.seeds)))
    train = [train_executable(), "-m", "model=lstm", f"data={data}",
             f"data.train_order={','.join(ORDERS)}", f"seed={seeds}", "model.finetune_after_steps=0",
             "trainer.enable_progress_bar=false", f"hydra.sweep.dir={folder}",
             *[a for a in passthrough if not a.startswith("data=")]]
    run_all("orders", [[train]], sweep_dir, threads=None)
    return folder


def ablate(cfg: DictConfig) -> None:
    written_by = shlex.join(["python", "experiments/ablations.py", *sys.argv[1:]])
    passthrough = parse(cfg)
    from tagrank.report import ablations, runs, stats  # imports torch: after the arguments are checked

    if cfg.orders:
        sweep = Path(cfg.aggregate) if cfg.aggregate else train_orders(cfg, passthrough)
        found = runs.load_runs(sweep)
        md = ablations.order_markdown(ablations.order_rows(found), found[0].data, written_by)
        written = {"ablation_order.md": md}
    else:
        found = runs.load_runs(Path(cfg.sweep))
        scores = stats.image_scores(found)
        data, n = found[0].data, len(scores.images)
        written = {"ablation_set_vs_order.md":
                   ablations.set_vs_order_markdown(ablations.set_vs_order(scores), data, n, written_by),
                   "ablation_relevance.md":
                   ablations.relevance_markdown(ablations.relevance_ablation(scores), data, n, written_by)}
    out_dir = Path(cfg.results) / found[0].data
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, md in written.items():
        atomic_write_text(out_dir / name, md)  # an interrupted run leaves the old table, not half a new one
        print(md)
    print("written: " + ", ".join(str(out_dir / name) for name in written))


main = command("ablations", ablate)


if __name__ == "__main__":
    main()
