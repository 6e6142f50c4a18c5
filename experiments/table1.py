"""The paper's Table 1 and Figures 3-4 on one dataset, by one command.

    python experiments/table1.py data=synthetic seeds=3          # make table1
    python experiments/table1.py quick=true                       # make table1-quick: minutes on 2 CPU cores
    python experiments/table1.py data=pascal07 data.root=/path/VOC2007 logger=wandb
    python experiments/table1.py methods=[lstm,svm] seeds=1       # a list is Hydra's [a,b]
    python experiments/table1.py aggregate=logs/table1/synthetic/<time>   # re-aggregate finished runs

1. Runs every method x seed as Hydra multiruns of the real ``tagrank-train``
   (``tagrank-train -m model=svm,svm_rank,frequency seed=0 data=<data> hydra.sweep.dir=<sweep>/frozen``);
   then the methods that fine-tune (lstm, the Naive-RNNs, the scorers, lstm_attention, label_query) with their staged
   schedule (``finetune``, below), as ``jobs`` multiruns at once into ``<sweep>/finetuned-<N>``, as in
   the paper: the SVMs are trained on the frozen CNN's features, the RNNs fine-tune it (on Flickr8k
   every method stays on the frozen backbone, ``experiment=flickr8k_frozen``, and ``protocol.flickr8k``
   in table1.yaml gives every run the same backbone). Every
   tagrank-train setting given (``data=``, ``logger=``, ``experiment=``, ``launcher=``,
   ``trainer.max_epochs=5``, ``data.root=...``, ``hydra.launcher.partition=gpu``) goes to every run.
2. Aggregates the run directories (``tagrank.report``) into ``<results>/<data>/``: ``table1.md``,
   ``table1.csv``, ``curves.csv``, ``fig3.png`` (NDCG@k and P@k against k) and ``fig4.png`` (test
   images with the ground truth, the LSTM's and the SVM's lists), ``report.html`` (every test photo
   with every method's list, sortable by NDCG and by the difference between two methods), and logs
   them to an "aggregate" run of the chosen logger (wandb: offline unless WANDB_MODE=online).

Settings: ``tagrank/conf/table1.yaml`` (``train.yaml`` and methods, quick_methods, seeds, quick, results, sweep_dir,
aggregate, protocol, finetune, jobs, reference, each explained there), composed by Hydra as tagrank's commands are,
so a misspelt setting is refused before anything runs. The data, logger and launcher are the composed
config's choices (``data=``, ``logger=``, ``launcher=``, or an ``experiment=`` that picks them).

On a SLURM cluster (from its login node), add ``launcher=slurm`` and the cluster's settings: every run is a SLURM job,
the frozen methods' multirun first (it builds the caches), then all fine-tuning runs as one job array, ``jobs``
of them at a time (``hydra.launcher.array_parallelism``; ``jobs=auto`` keeps the launcher's own); the table is
aggregated here once they have finished:

    python experiments/table1.py data=pascal07 launcher=slurm hydra.launcher.partition=gpu logger=wandb
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Iterator

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, ListConfig, OmegaConf

from tagrank import CONF_DIR, config_options
from tagrank.cli import command
from tagrank.config import PositiveInt, check_value, user_error_exit
from tagrank.errors import TagrankError

log = logging.getLogger("tagrank")

# This script's settings (tagrank/conf/table1.yaml); every other one given is tagrank-train's and goes to the runs.
SETTINGS = ("methods", "quick_methods", "seeds", "quick", "results", "sweep_dir", "aggregate", "finetune", "jobs",
            "reference", "protocol")
# Chosen here for each run (model=<methods>, seed=<0..seeds-1>, hydra.sweep.dir=<sweep>/<group>): the way to
# set them is the setting beside each.
MADE_HERE = {"model": "methods=[...]", "seed": "seeds=<how many>", "hydra.sweep.dir": "sweep_dir=<folder>"}
# Hydra's bookkeeping of this process, not a setting for the runs.
NOT_PASSED = ("hydra.mode", "hydra.run.")
# Fitted by one deterministic solve on the cached features: every seed gives the same run
# (tests/test_baselines.py checks it), so one run (seed 0) stands for all; an SVM-rank run with its C
# search takes the better part of an hour on Flickr8k on 2 cores.
DETERMINISTIC = ("svm", "svm_rank", "frequency")
SCHEDULES = {"synthetic": "synthetic_finetune", "flickr8k": "flickr8k_frozen"}  # finetune=auto, per data

# Quick mode: a small synthetic set at 64 px and short schedules; a smoke run of the whole pipeline.
QUICK = ["data.n_train=1000", "data.n_val=200", "data.n_test=400", "data.render_size=64", "backbone.image_size=64",
         "trainer.max_epochs=8"]


# What aggregate= reads: the runs are finished, so the settings that make them would change nothing.
AGGREGATE_SETTINGS = ("aggregate", "logger", "results", "reference", "quick")


@dataclass
class Plan:
    """What one table1 command does: its settings checked, and the composed config's choices it reads."""

    data: str                  # the data config chosen (data=, or an experiment= that picks it)
    logger: str                # the logger config chosen (csv, tensorboard, wandb)
    methods: list[str]
    seeds: int
    quick: bool
    results: str | None
    sweep_dir: str | None
    aggregate: str | None
    finetune: str
    jobs: int | None           # None: auto (this machine's CPUs; on SLURM, the launcher's array_parallelism)
    reference: str
    slurm: bool                # the composed launcher submits to SLURM
    experiment: str | None     # an experiment config the user chose: it goes to every run
    passthrough: list[str] = field(default_factory=list)  # tagrank-train settings given, as written
    protocol: list[str] = field(default_factory=list)     # the data's protocol settings not overridden (protocol_settings)


LISTS = ("methods", "quick_methods")  # the settings that are lists of model config names


def comma_list(argv: list[str]) -> str | None:
    """The one line for ``methods=a,b`` (the hand-parsed form before Hydra; ``quick_methods=a,b`` alike),
    which Hydra would call an ambiguous sweep in three lines: say the list form it takes now."""
    for arg in argv:
        key, _, value = arg.partition("=")
        if key in LISTS and "," in value and not value.lstrip().startswith("["):
            return f"{arg}: a list is written {key}=[{value.strip(chr(39) + chr(34))}] (Hydra's list form)"
    return None


# The model.* settings given, taken off the command line before Hydra composes table1.yaml (main()).
MODEL_ARGS: list[str] = []


def model_settings(argv: list[str]) -> tuple[list[str], list[str]]:
    """``argv`` without its ``model.*`` settings, and those settings. table1.yaml composes train.yaml, whose
    model is a placeholder (the LSTM): Hydra would check ``model.C_grid=...`` against the LSTM's keys and
    refuse a setting of the SVM. They are for the runs, where each is checked against its own model."""
    model = [a for a in argv if a.partition("=")[0].lstrip("+~").startswith("model.")]
    return [a for a in argv if a not in model], model


def method_list(value: object, name: str = "methods") -> list[str]:
    """``methods`` (or ``quick_methods``, the ``name`` a bad value is reported under): a list of model config
    names, or one name (``methods=lstm``)."""
    if isinstance(value, str) and "," in value:
        raise TagrankError(comma_list([f"{name}={value}"]) or "")
    methods = [str(m) for m in (value if isinstance(value, (list, ListConfig)) else [value]) if m]
    known = config_options("model")
    if not methods or set(methods) - set(known):
        raise TagrankError(f"{name}={value if isinstance(value, str) else '[' + ','.join(methods) + ']'}: expected "
                           f"a list of {', '.join(known)} ({name}=[lstm,svm])")
    return methods


def parse(cfg: DictConfig, hydra: DictConfig, model_args: list[str] | None = None) -> Plan:
    """The settings checked against each other before any run; ``hydra`` is the composed Hydra config
    (``HydraConfig.get()``), whose choices and launcher say what data, logger and launcher the runs get;
    ``model_args``: the ``model.*`` settings given (:func:`model_settings`; None: those main() took off)."""
    typed = [*hydra.overrides.task, *(a for a in hydra.overrides.hydra if not a.startswith(NOT_PASSED)),
             *(MODEL_ARGS if model_args is None else model_args)]
    passthrough = [a for a in typed if a.partition("=")[0].lstrip("+~") not in SETTINGS]
    choices = hydra.runtime.choices
    if cfg.aggregate:
        refuse_unused_with_aggregate(typed, AGGREGATE_SETTINGS)
    for arg in passthrough:
        key = arg.partition("=")[0].lstrip("+~")
        if key in MADE_HERE:
            raise TagrankError(f"{arg}: table1 sets {key} for each run; pass {MADE_HERE[key]}")
    check_value("quick", cfg.quick, bool)
    check_value("seeds", cfg.seeds, PositiveInt)
    jobs = job_count(cfg.jobs)
    data = str(choices["data"])
    if cfg.quick and data != "synthetic":
        raise TagrankError("quick=true shrinks the synthetic data; it does not apply to data=" + data)
    # quick=true runs quick_methods, a short list that keeps the smoke run short, unless methods= is given;
    # a quick_methods= given where it would change nothing is refused, not ignored
    given = {a.partition("=")[0].lstrip("+~"): a for a in typed}
    if "quick_methods" in given and not cfg.aggregate and (not cfg.quick or "methods" in given):
        raise TagrankError(f"{given['quick_methods']}: the list quick=true runs, so here it would change nothing: "
                           + ("pass one of methods= and quick_methods=" if cfg.quick else
                              "add quick=true, or pass methods=[...]"))
    name = "quick_methods" if cfg.quick and "methods" not in given else "methods"
    methods = [] if cfg.aggregate else method_list(cfg[name], name)
    if not cfg.aggregate and cfg.reference not in methods:  # said now, not after the runs
        raise TagrankError(f"reference={cfg.reference} (the method of the paired difference column) is not among "
                           f"{name}=[{','.join(methods)}]: add it, or pass reference={methods[0]}")
    experiment = choices.get("experiment")
    if experiment and cfg.finetune not in ("auto", "none"):
        raise TagrankError(f"finetune={cfg.finetune} and experiment={experiment} both choose an experiment config "
                           "for the fine-tuning runs: pass one of them")
    target = str(OmegaConf.select(hydra, "launcher._target_", default="") or "")
    protocol = [] if cfg.quick or cfg.aggregate else protocol_settings(cfg.protocol, data, passthrough)
    if protocol and experiment:  # an experiment config is a protocol of its own
        log.info("protocol.%s (%s) not applied: experiment=%s says the protocol", data, " ".join(protocol), experiment)
        protocol = []
    return Plan(data=data, logger=str(choices["logger"]), methods=methods, seeds=cfg.seeds, quick=cfg.quick,
                results=cfg.results, sweep_dir=cfg.sweep_dir, aggregate=cfg.aggregate, finetune=str(cfg.finetune),
                jobs=jobs, reference=str(cfg.reference), slurm=target.endswith("SlurmLauncher"),
                experiment=experiment, passthrough=[a for a in passthrough if a.partition("=")[0] not in ("data", "logger")],
                protocol=protocol)


def protocol_settings(protocol: DictConfig, data: str, given: list[str]) -> list[str]:
    """``protocol``'s settings for ``data`` (table1.yaml) that the command line leaves alone. A setting given
    for the same key or anything under it takes that key over: ``backbone.image_size=224`` asks for the
    default backbone at 224 px (as the commands recorded before the protocol did), not the protocol's
    backbone at 224, so the protocol's ``backbone=...`` is dropped; each one dropped is said in the log."""
    settings = [str(s) for s in (protocol or {}).get(data, None) or []]
    keys = {a.partition("=")[0].lstrip("+~") for a in given}
    kept = []
    for setting in settings:
        key = setting.partition("=")[0].lstrip("+~")
        taken = sorted(k for k in keys if k == key or k.startswith(key + "."))
        if taken:
            log.info("protocol.%s: %s not applied, the command line sets %s", data, setting, " ".join(taken))
        else:
            kept.append(setting)
    return kept


def refuse_unused_with_aggregate(arguments: list[str], allowed: tuple[str, ...]) -> None:
    """``aggregate=`` re-reads finished runs: a setting that makes runs would change nothing, so it is refused."""
    unused = [a for a in arguments if a.partition("=")[0] not in allowed]
    if unused:
        raise TagrankError(f"aggregate= re-reads finished runs, so {' '.join(unused)} would change nothing; "
                           f"with aggregate= pass only {', '.join(k for k in allowed if k != 'aggregate')}")


def results_dir(plan: Plan, data: str) -> Path:
    """Where the table goes: ``<results>/<data>``. A quick run's default is ``results/quick``: its smoke
    numbers never overwrite the committed reference results in ``results/synthetic``."""
    default = "results/quick" if plan.quick else "results"
    return Path(plan.results or default) / data


def made_quick(found: list) -> bool:
    """Whether every run of a sweep was made by ``quick=true`` (its smoke overrides are in each run's
    ``.hydra/overrides.yaml``): ``aggregate=`` of such a sweep then writes to ``results/quick`` too."""

    def overrides(run) -> set[str]:
        path = run.path / ".hydra" / "overrides.yaml"
        given = map(str, OmegaConf.load(path)) if path.is_file() else []
        # a sweep made before data.image_size was renamed data.render_size (issue 25) says the old name
        return {o.replace("data.image_size=", "data.render_size=", 1) for o in given}

    return all(set(QUICK) <= overrides(run) for run in found)


def table_dir(plan: Plan, found: list) -> Path:
    """``results_dir`` of the sweep's data; for ``aggregate=`` of a sweep that ``quick=true`` made, the
    quick one, whatever ``quick`` says now."""
    if plan.aggregate and not plan.quick and made_quick(found):
        log.info("%s was made by quick=true: its table goes where quick=true puts it", plan.aggregate)
        plan = replace(plan, quick=True)
    return results_dir(plan, found[0].data)


def wandb_group(data: str, sweep_dir: Path) -> str:
    """The W&B group of one table: its trial runs and its aggregate run."""
    return f"table1-{data}-{Path(sweep_dir).name}"


def rnn_overrides(plan: Plan) -> list[str]:
    """The fine-tuning methods' schedule: an experiment config, or their model config's own (or that of the
    ``experiment=`` the user chose, which goes to every run)."""
    choice = plan.finetune
    if choice == "auto":
        choice = "" if plan.quick or plan.experiment else SCHEDULES.get(plan.data, "")
    if choice == "none":
        return ["model.finetune_after_steps=0"]
    return [f"experiment={choice}"] if choice else []


def job_count(value: object) -> int | None:
    """``jobs``: a positive whole number, or ``auto`` (None: decided where the runs go, see :func:`launch`)."""
    if value == "auto":
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise TagrankError(f"jobs={value!r}: expected a positive whole number or auto")
    return value


def split_runs(methods: list[str], seeds: list[int], jobs: int) -> list[list[tuple[str, list[int]]]]:
    """The (method, seed) runs in ``jobs`` near-equal consecutive shares, each as (method, seeds) multiruns:
    2 methods x 3 seeds in 2 jobs are one method's 3 seeds each."""
    runs = [(m, s) for m in methods for s in seeds]
    shares, start = [], 0
    for j in range(min(jobs, len(runs))):
        end = start + len(runs) // jobs + (j < len(runs) % jobs)
        share: dict[str, list[int]] = {}
        for m, s in runs[start:end]:
            share.setdefault(m, []).append(s)
        shares.append(list(share.items()))
        start = end
    return shares


def slurm_parallelism(plan: Plan) -> list[str]:
    """On SLURM, ``jobs=N`` is how many fine-tuning jobs of the array run at once (the launcher's
    ``array_parallelism``); ``jobs=auto`` keeps the launcher's own. Both given would be two answers."""
    given = [a for a in plan.passthrough if a.partition("=")[0] == "hydra.launcher.array_parallelism"]
    if plan.jobs is None:
        return []
    if given:
        raise TagrankError(f"jobs={plan.jobs} and {given[0]} both say how many fine-tuning jobs run at once: pass one")
    return [f"hydra.launcher.array_parallelism={plan.jobs}"]


def launch(plan: Plan, sweep_dir: Path) -> None:
    """The methods x seeds as Hydra multiruns of tagrank-train: first the methods on frozen features (one
    multirun, which also builds the dataset and feature caches), then the fine-tuning methods
    in ``jobs`` multiruns at once, each with its share of the CPU threads.

    Why at once: a fine-tuning step at batch 16 keeps one core busy far better than it uses two (the
    convolutions are small), so two runs of one thread each finish sooner than the same runs one
    after another with two threads each; and on a loaded machine two threads that wait for each
    other lose several times over. ``jobs=1`` runs them one after another."""
    train = train_executable()
    seeds = list(range(plan.seeds))
    frozen = [m for m in plan.methods if not fine_tunes(m)]
    common = [f"data={plan.data}", f"logger={plan.logger}", "trainer.enable_progress_bar=false"]
    if plan.logger == "wandb":
        common.append(f"logger.wandb.group={wandb_group(plan.data, sweep_dir)}")
    after = (QUICK if plan.quick else []) + plan.protocol + plan.passthrough
    if plan.protocol:
        log.info("%s's protocol (table1.yaml, protocol.%s): %s", plan.data, plan.data, " ".join(plan.protocol))

    def command(members: list[str], run_seeds: list[int], folder: str, extra: list[str]) -> list[str]:
        return [train, "-m", f"model={','.join(members)}", f"seed={','.join(map(str, run_seeds))}", *common,
                f"hydra.sweep.dir={sweep_dir / folder}", *extra, *after]

    names = unused(sweep_dir, "frozen")
    solved, others = [m for m in frozen if m in DETERMINISTIC], [m for m in frozen if m not in DETERMINISTIC]
    groups = [command(solved, seeds[:1], next(names), [])] if solved else []
    groups += [command(others, seeds, next(names), [])] if others else []
    if groups:
        run_all("frozen", [groups], sweep_dir, threads=None)
    tuned = [m for m in plan.methods if fine_tunes(m)]
    if tuned and plan.slurm:
        # SLURM schedules the jobs and gives each its CPUs: every fine-tuning run in one multirun (one job array,
        # jobs= of them at a time), and no thread share from this machine's CPUs.
        folder = next(unused(sweep_dir, "finetuned"))
        run_all("finetuned", [[command(tuned, seeds, folder, rnn_overrides(plan) + slurm_parallelism(plan))]],
                sweep_dir, threads=None)
    elif tuned:
        shares = split_runs(tuned, seeds, plan.jobs or min(2, os.cpu_count() or 1))
        names = unused(sweep_dir, "finetuned")
        commands = [[command([m], s, next(names), rnn_overrides(plan)) for m, s in share] for share in shares]
        run_all("finetuned", commands, sweep_dir, threads=max(1, (os.cpu_count() or 1) // len(shares)))



def fine_tunes(method: str) -> bool:
    """Whether a model config takes the staged fine-tuning schedule (``_staged`` in its defaults, itself or
    through the config it extends): those methods get ``finetune=``'s schedule, the others run on frozen
    features. Read from the configs, not listed here, so a new staged method (lstm_attention, label_query)
    is trained like the paper's LSTM without anyone remembering to add it."""
    defaults = OmegaConf.load(Path(CONF_DIR) / "model" / f"{method}.yaml").get("defaults", [])
    names = [d for d in defaults if isinstance(d, str)]
    return "_staged" in names or any(fine_tunes(n) for n in names if n not in ("_self_", "_staged"))


def train_executable() -> str:
    """``tagrank-train`` beside this Python (its venv), else on the PATH."""
    exe = Path(sys.executable).parent / "tagrank-train"
    train = str(exe) if exe.is_file() else shutil.which("tagrank-train")
    if not train:
        raise TagrankError("tagrank-train is not installed (pip install -e .)")
    return train


def unused(sweep_dir: Path, stem: str) -> Iterator[str]:
    """Folder names ``<stem>``, ``<stem>-1``, ... not yet in the sweep: a finished sweep given again as
    ``sweep_dir`` (with more ``methods`` or seeds) gains runs beside its own, never over them."""
    for name in [stem] * (stem == "frozen") + [f"{stem}-{i}" for i in range(1, 1000)]:
        if not (sweep_dir / name).exists():
            yield name


def run_all(group: str, jobs: list[list[list[str]]], sweep_dir: Path, threads: int | None) -> None:
    """Run each job's commands one after another, the jobs at the same time; with several, each job's
    output goes to ``<sweep>/<group>-job<N>.log`` and ``threads`` sets its OMP_NUM_THREADS."""
    env = dict(os.environ)
    if threads is not None and len(jobs) > 1:
        env.setdefault("OMP_NUM_THREADS", str(threads))
    sweep_dir.mkdir(parents=True, exist_ok=True)

    def run_job(n: int, commands: list[list[str]]) -> int:
        log = sweep_dir / f"{group}-job{n}.log" if len(jobs) > 1 else None
        for cmd in commands:
            print("+ " + " ".join(cmd) + (f"    (output: {log})" if log else ""), flush=True)
            with open(log, "a") if log else nullcontext() as out:
                code = subprocess.run(cmd, env=env, stdout=out, stderr=subprocess.STDOUT if out else None).returncode
            if code != 0:
                if log:
                    print(f"--- the end of {log}:\n" + "".join(log.read_text().splitlines(True)[-40:]), flush=True)
                return code
        return 0

    start = time.time()
    with ThreadPoolExecutor(len(jobs)) as pool:
        codes = list(pool.map(run_job, range(1, len(jobs) + 1), jobs))
    if any(codes):
        raise TagrankError(f"a multirun failed (exit status {max(codes)}); finished runs are in {sweep_dir}")
    print(f"multiruns ({group}, {len(jobs)} at a time) finished in {time.time() - start:.0f} s", flush=True)


def report(sweep_dir: Path, out_dir: Path, logger: str, reference: str = "lstm") -> str:
    """Table 1, its figures and report.html from the runs of a sweep. Where the test images have several
    annotators' lists (the caption data: ``lists`` in predictions.jsonl), the table also has the
    leave-one-annotator-out columns ``ndcg_loo`` / ``p_loo`` and the person's row, and Fig. 3 the person's
    dashed line (tagrank.report.stats); the synthetic data has one list an image, so neither."""
    # tagrank.report imports torch: after the arguments are checked
    from tagrank.report import figures, html, loggers, runs, stats, tables

    found = runs.load_runs(sweep_dir)
    data = found[0].data
    scores = stats.image_scores(found)
    if reference not in scores.runs:
        raise TagrankError(f"reference={reference!r}: no runs of it in {sweep_dir} (methods: {', '.join(scores.runs)})")
    rows = stats.summarise(scores, reference=reference)
    md = tables.write_table(rows, out_dir, data, reference)
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


def table1(cfg: DictConfig) -> None:
    """Run the sweep (unless ``aggregate=``), then write the table, figures and report."""
    plan = parse(cfg, HydraConfig.get())
    if plan.aggregate:
        sweep_dir = Path(plan.aggregate)
    else:
        stamp = datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
        default = Path(os.environ.get("TAGRANK_LOGS", "logs")) / "table1" / plan.data / stamp
        sweep_dir = Path(plan.sweep_dir or default).resolve()
        if plan.slurm:
            slurm_parallelism(plan)  # a conflict said now, not after the frozen runs
        launch(plan, sweep_dir)
    from tagrank.report.runs import load_runs  # imports torch: after the arguments are checked

    out_dir = table_dir(plan, load_runs(sweep_dir))
    md = report(sweep_dir, out_dir, plan.logger, plan.reference)
    print(md)
    print(f"written: {out_dir}/table1.md, table1.csv, curves.csv, fig3.png, fig4.png, report.html (runs: {sweep_dir})")


hydra_main = command("table1", table1)


def main() -> None:
    """The Hydra entry, after one check Hydra cannot make: the comma list of the hand-parsed days."""
    message = comma_list(sys.argv[1:])
    if message:
        user_error_exit(TagrankError(message))
    sys.argv[1:], MODEL_ARGS[:] = model_settings(sys.argv[1:])
    hydra_main()


if __name__ == "__main__":
    main()
