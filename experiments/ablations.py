"""Issue 15's three ablations, by one command each (docs/results.md: Ablations).

    python experiments/ablations.py sweep=logs/table1/flickr8k/<time>     # set against order, which relevance
    python experiments/ablations.py orders data=flickr8k data.root=../shared/data/flickr8k seeds=1
    python experiments/ablations.py orders aggregate=logs/ablation_order/flickr8k/<time>   # re-aggregate

``sweep=<a Table 1 sweep directory>`` rescores its saved predictions (nothing is trained) and writes
``<results>/<data>/ablation_set_vs_order.md`` (each method's NDCG beside that of its found tags in the
human order: what ordering costs it) and ``ablation_relevance.md`` (Table 1's NDCG with ``linear``,
``inverse_log`` and ``binary`` relevance, and whether the methods' ranking changes).

``orders`` trains the paper's LSTM once per ``data.train_order`` (human, frequency, rare_first, random)
and seed, as one Hydra multirun of the real ``tagrank-train`` (``tagrank-train -m model=lstm
data.train_order=human,frequency,rare_first,random seed=0,... model.finetune_after_steps=0
hydra.sweep.dir=<sweep>/orders-N``), and writes ``<results>/<data>/ablation_order.md``: NDCG and P
(mean over k) per order, every run scored on the human order, each order against the human one on
the same images. The backbone stays frozen (features cached once, shared by every run): fine-tuning
four orders x seeds on 2 CPU cores would take hours (Table 1's fine-tuned LSTM runs alone take
~7 minutes each), and the question is about the recurrent head's training target. Any other
``key=value`` (``data.root=...``, ``trainer.max_steps=50``) goes to every run.

Settings (key=value): sweep (Table 1 mode), results (results), and for ``orders``: data (synthetic),
seeds (3), sweep_dir (default ``$TAGRANK_LOGS/ablation_order/<data>/<time>``; an existing one gains
an ``orders-N`` folder beside what it holds), aggregate (a finished orders sweep: skip training).
"""

from __future__ import annotations

import os
import shlex
import sys
from datetime import datetime
from pathlib import Path

from table1 import refuse_unused_with_aggregate, run_all, train_executable, unused

from tagrank.errors import TagrankError

SETTINGS = {"sweep": "", "results": "results", "data": "synthetic", "seeds": "3", "sweep_dir": "", "aggregate": ""}
ORDERS = ("human", "frequency", "rare_first", "random")  # tagrank.data.datamodule.TrainOrder


def parse(argv: list[str]) -> tuple[bool, dict[str, str], list[str]]:
    """(orders mode, settings, what goes to tagrank-train)."""
    orders = bool(argv) and argv[0] == "orders"
    settings, passthrough, given = dict(SETTINGS), [], []
    for arg in argv[orders:]:
        key, sep, value = arg.partition("=")
        if not sep:
            raise TagrankError(f"{arg!r}: arguments are 'orders' first, then key=value "
                               f"(settings: {', '.join(SETTINGS)})")
        if key in SETTINGS:
            settings[key] = value
            given.append(arg)
        else:
            passthrough.append(arg)
    if orders and settings["aggregate"]:
        refuse_unused_with_aggregate(given + passthrough, ("aggregate", "results"))
    if orders:
        if settings["sweep"]:
            raise TagrankError("sweep= is for the Table 1 ablations, without 'orders'")
        if not settings["seeds"].isdigit() or int(settings["seeds"]) < 1:
            raise TagrankError(f"seeds={settings['seeds']!r}: expected a positive whole number")
    elif not settings["sweep"]:
        raise TagrankError("give sweep=<a Table 1 sweep directory>, or 'orders' to train the order ablation")
    elif passthrough:
        raise TagrankError(f"{passthrough[0]!r} is not a setting of the Table 1 ablations (sweep, results); "
                           "training settings go with 'orders'")
    return orders, settings, passthrough


def train_orders(settings: dict[str, str], passthrough: list[str]) -> Path:
    """The LSTM on each training order x seed, one multirun; returns its folder (only its runs are read)."""
    stamp = datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    default = Path(os.environ.get("TAGRANK_LOGS", "logs")) / "ablation_order" / settings["data"] / stamp
    sweep_dir = Path(settings["sweep_dir"] or default).resolve()
    folder = sweep_dir / next(unused(sweep_dir, "orders"))
    seeds = ",".join(map(str, range(int(settings["seeds"]))))
    command = [train_executable(), "-m", "model=lstm", f"data={settings['data']}",
               f"data.train_order={','.join(ORDERS)}", f"seed={seeds}", "model.finetune_after_steps=0",
               "trainer.enable_progress_bar=false", f"hydra.sweep.dir={folder}", *passthrough]
    run_all("orders", [[command]], sweep_dir, threads=None)
    return folder


def main(argv: list[str]) -> int:
    command = shlex.join(["python", "experiments/ablations.py", *argv])
    try:
        orders, settings, passthrough = parse(argv)
        # tagrank.report imports torch: after the arguments are checked
        from tagrank.report import ablations, runs, stats

        if orders:
            sweep = Path(settings["aggregate"]) if settings["aggregate"] else train_orders(settings, passthrough)
            found = runs.load_runs(sweep)
            md = ablations.order_markdown(ablations.order_rows(found), found[0].data, command)
            written = {"ablation_order.md": md}
        else:
            found = runs.load_runs(Path(settings["sweep"]))
            scores = stats.image_scores(found)
            data, n = found[0].data, len(scores.images)
            written = {"ablation_set_vs_order.md":
                       ablations.set_vs_order_markdown(ablations.set_vs_order(scores), data, n, command),
                       "ablation_relevance.md":
                       ablations.relevance_markdown(ablations.relevance_ablation(scores), data, n, command)}
        out_dir = Path(settings["results"]) / found[0].data
        out_dir.mkdir(parents=True, exist_ok=True)
        for name, md in written.items():
            (out_dir / name).write_text(md)
            print(md)
    except TagrankError as err:
        print(f"ablations: error: {err}", file=sys.stderr)
        return 2
    print("written: " + ", ".join(str(out_dir / name) for name in written))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
