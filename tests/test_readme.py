"""The commands of README.md and docs/*.md run as written: the quick start and every everyday command
here, through the real console scripts and Makefile, with only the tests' tiny limits appended (TINY, and
3 training steps: below one epoch, so a short run is what they exercise). Every other command in those
pages is run by the test named for it, or exempt with the reason (network, hours, a GPU, a cluster)."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from .conftest import ROOT, TINY

README = (ROOT / "README.md").read_text()
USING = (ROOT / "docs/using.md").read_text()
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BIN = Path(sys.executable).parent  # this venv's console scripts (the README's .venv/bin)
LIMITS = [*TINY, "trainer.max_steps=3"]

# Not run by any test, and why.
EXEMPT = {
    "make install": "creates .venv and installs tagrank and its dependencies from the package index (network)",
    "make test": "runs this test suite",
    "tagrank-train backbone=vgg16 backbone.weights=/path/vgg16.pth": "needs a VGG16 weights file (528 MB, not "
                                                                       "shipped; tagrank never downloads weights)",
    "tagrank-train experiment=paper_pascal07 trainer=gpu backbone.weights=/path/vgg16.pth data.root=... "
    "data.tags=...": "needs a GPU, VGG16 weights and the VOC 2007 devkit; tests/test_table1.py composes it",
    "tagrank-train hparams_search=scorer_optuna data=flickr8k data.root=../shared/data/flickr8k "
    "experiment=flickr8k_finetune model.finetune_after_steps=0 test=false hydra.sweeper.n_trials=5":
        "a study of 5 Flickr8k runs (minutes each); tests/test_scaling.py runs an Optuna study for real",
    "tagrank-train hparams_search=lstm_optuna ... (the same)": "the line above with the LSTM's search",
    "tagrank-train trainer=gpu": "needs a CUDA GPU; tests/test_scaling.py composes the GPU and DDP trainers",
    "tagrank-train -m launcher=slurm trainer=ddp hydra.launcher.gpus_per_node=4 hydra.launcher.tasks_per_node=4 "
    "seed=1": "needs 4 GPUs on a SLURM node; tests/test_scaling.py runs DDP on 2 CPU processes",
    "tagrank-train hparams_search=lstm_optuna launcher=slurm hydra.sweeper.n_jobs=8":
        "an Optuna study on a SLURM cluster; tests/test_scaling.py runs a study, tests/test_slurm.py SLURM sweeps",
    "make table1": "every method x 3 seeds (an hour on 2 cores for the seven of docs/results.md; the two of "
                   "issue 24 add to it); tests/test_table1.py runs the pipeline small",
    "make table1 DATA=flickr8k ARGS=\"data.root=../shared/data/flickr8k\"": "37 minutes on 2 cores with the feature cache built (results/flickr8k/README.md)",
    "make table1 DATA=pascal07 ARGS=\"data.root=... data.tags=...\"": "needs the VOC 2007 devkit; hours",
    "python experiments/table1.py data=synthetic seeds=3 methods=[lstm,svm,svm_rank,naive_rnn,frequency]":
        "half of make table1 (29 minutes)",
    "python experiments/table1.py data=synthetic seeds=3 methods=[naive_rnn_captioning,scorer] "
    "sweep_dir=<the same sweep>": "the other half (30 minutes)",
    "python experiments/ablations.py orders=true data=flickr8k data.root=../shared/data/flickr8k seeds=1":
        "four Flickr8k runs; tests/test_ablations.py runs the order ablation small",
    "make bench": "about 10 minutes; tests/test_speed.py runs benchmarks/bench.py in its quick mode",
    "make bench-gpu": "needs a CUDA GPU; tests/test_speed.py runs benchmarks/bench_gpu.py in its CPU smoke mode",
}

# Run, in essence, by another test: the command -> (that test file, a piece of the command it holds).
ELSEWHERE = {
    "tagrank-predict ckpt_path=<run>/checkpoints/best.ckpt images=photos/": ("test_predict.py", "images="),
    "tagrank-predict ckpt_path=<run>/checkpoints/best.ckpt images=photos/ top_k=5 out=preds.jsonl":
        ("test_predict.py", "top_k="),
    "tagrank-predict ckpt_path=<scorer run>/checkpoints/best.ckpt images=photos/ stop=true":
        ("test_predict.py", "stop=true"),
    "tagrank-export ckpt_path=<run>/checkpoints/best.ckpt format=onnx out=tagger.onnx": ("test_export.py", "onnx"),
    "tagrank-data download=pascal07 download.dest=/data/voc": ("test_download.py", "def test_pascal07_tars_merge"),
    "tagrank-data download=coco download.dest=/data/coco": ("test_download.py", "def test_tagrank_data_download_command"),
    "tagrank-data data=pascal07 data.root=/data/voc/VOCdevkit data.tags=/data/hwang_tags.txt":
        ("test_converters.py", "def test_pascal07_tag_lists_pinned"),
    "tagrank-train data=pascal07 data.root=/data/voc/VOCdevkit data.tags=/data/hwang_tags.txt":
        ("test_configs.py", "def test_model_x_data_composes"),
    "tagrank-data data=flickr8k data.root=../shared/data/flickr8k": ("test_captions.py", "data=flickr8k"),
    "tagrank-data data=captions data.root=/data/flickr30k data.vocabulary=/data/my_tags.txt":
        ("test_captions.py", "data=captions"),
    "tagrank-train trainer=ddp": ("test_scaling.py", "trainer=ddp"),
    "tagrank-train -m model=lstm seed=1,2,3": ("test_scaling.py", '"seed=1,2"'),
    "tagrank-train hparams_search=lstm_optuna hydra.sweeper.storage=sqlite:///logs/optuna.db "
    "hydra.sweeper.study_name=lstm_ndcg": ("test_scaling.py", "hydra.sweeper.storage=sqlite:///"),
    "tagrank-train -m launcher=slurm hydra.launcher.partition=gpu seed=1,2,3": ("test_slurm.py", '"-m", *ON_THIS_NODE'),
    "tagrank-train -m logger=wandb model=lstm,naive_rnn": ("test_scaling.py", '"logger=wandb"'),
    "make table1-quick": ("test_table1.py", "quick=true"),
    "python experiments/table1.py aggregate=logs/table1/synthetic/<time>": ("test_table1.py", "aggregate="),
    "python experiments/table1.py aggregate=<the sweep> [reference=naive_rnn]": ("test_table1.py", "reference="),
    "python experiments/ablations.py sweep=logs/table1/flickr8k/<time>": ("test_ablations.py", "sweep="),
    "python experiments/ablations.py orders=true aggregate=logs/ablation_order/flickr8k/<time>":
        ("test_ablations.py", "aggregate="),
}


def bash_blocks(text: str) -> list[str]:
    """The commands of the page's bash blocks: one a line (a line ending in \\ goes on), comments left out."""
    return [" ".join(re.split(r"\s#", line)[0].split()) for block in re.findall(r"```bash\n(.*?)```", text, re.S)
            for line in block.replace("\\\n", " ").splitlines() if re.split(r"\s#", line)[0].strip()]


def commands(text: str, after: str) -> list[str]:
    """The commands of the first bash block after the line ``after``."""
    start = text.index("```bash", text.index(after))
    return bash_blocks(text[start:text.index("```", start + len("```bash")) + 3])


QUICK_START = commands(README, "# tagrank")
EVERYDAY = commands(USING, "## Everyday commands")
ALL_COMMANDS = {c: page.relative_to(ROOT) for page in reversed(PAGES) for c in bash_blocks(page.read_text())}


@pytest.fixture(scope="module")
def env(cache_dir) -> dict[str, str]:
    """Runs land in logs/ under each test's folder, as the README's paths say; the cache is the session's."""
    env = {k: v for k, v in os.environ.items() if k != "TAGRANK_LOGS"}
    env.update(PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}", TAGRANK_CACHE=str(cache_dir), WANDB_MODE="offline",
               PYTHONUNBUFFERED="1")
    return env


def run(command: str, cwd: Path, env: dict, extra: list[str] = (), run_dir: str | Path = "") -> Path:
    """Run a README command with ``<run>`` filled in and the limits appended; return the run directory it made."""
    words = shlex.split(command.replace("<run>", str(run_dir)))
    if words[0] == "make":  # the Makefile's .venv is this venv, wherever it is
        words[1:1] = ["-f", str(ROOT / "Makefile")]
        words += [f"BIN={BIN}", f"ARGS={' '.join([*LIMITS, *extra])}"]
    else:
        words[0] = str(BIN / Path(words[0]).name)
        words += [*LIMITS, *extra] if words[0].endswith("tagrank-train") else ["trainer.enable_progress_bar=false"]
    before = set(cwd.glob("logs/*/runs/*"))
    proc = subprocess.run(words, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"{command}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    made = set(cwd.glob("logs/*/runs/*")) - before
    assert len(made) == 1, made
    return made.pop()


@pytest.fixture(scope="module")
def quick_start(tmp_path_factory, env) -> Path:
    """The folder where ``make train`` ran, as in the quick start (its run is under logs/train/runs/)."""
    cwd = tmp_path_factory.mktemp("quick_start")
    run(QUICK_START[2], cwd, env)
    return cwd


def has(run_dir: Path, *files: str) -> None:
    for f in files:
        assert list(run_dir.glob(f)), f"{run_dir} has no {f}"


TRAINED = ["checkpoints/best.ckpt", "checkpoints/last.ckpt", "metrics.json", "predictions.jsonl", ".hydra/config.yaml"]


def test_quick_start_trains_then_re_evaluates_to_the_same_numbers(quick_start, env):
    [trained] = quick_start.glob("logs/train/runs/*")
    has(trained, *TRAINED, "csv/metrics.csv")
    evaluated = run(QUICK_START[3], quick_start, env, run_dir=trained.name)
    assert json.loads((evaluated / "metrics.json").read_text()) == json.loads((trained / "metrics.json").read_text())


# The everyday commands run here (the README mentions logger=wandb in a comment). Each is a process that
# imports torch and Lightning (10-20 s on 2 cores): the ones whose path other fast tests cover are slow.
EVERYDAY_RUN = [
    "tagrank-train model.hidden_size=512 trainer.max_steps=200",
    "tagrank-train ckpt_path=logs/train/runs/<run>/checkpoints/last.ckpt",
    "tagrank-eval ckpt_path=<run>/checkpoints/best.ckpt split=val",  # the quick start runs tagrank-eval
    "tagrank-train debug=fdr",  # test_train.py: test_fast_dev_run
    "tagrank-train logger=tensorboard",
    "tagrank-train logger=wandb",  # test_scaling.py: the offline W&B run
    "tagrank-train experiment=synthetic_finetune",
    "tagrank-eval ckpt_path=<run>/checkpoints/best.ckpt report=true",  # test_report.py
]
SLOW = EVERYDAY_RUN[2:]


def test_every_command_in_the_readme_and_docs_is_run_here_or_elsewhere_or_exempt_with_a_reason():
    assert QUICK_START[2:] == ["make train",
                               ".venv/bin/tagrank-eval ckpt_path=logs/train/runs/<run>/checkpoints/best.ckpt"]
    assert "or logger=wandb" in USING
    written = set(EVERYDAY_RUN) - {"tagrank-train logger=wandb"}  # that one is in a comment
    assert set(EVERYDAY) <= written | set(EXEMPT), "an everyday command that is neither run here nor exempt"
    here = {*QUICK_START[2:], *written}
    accounted = here | set(EXEMPT) | set(ELSEWHERE)
    assert len(accounted) == len(here) + len(EXEMPT) + len(ELSEWHERE), "a command in two of the lists"
    unaccounted = [f"{page}: {c}" for c, page in ALL_COMMANDS.items() if c not in accounted]
    assert not unaccounted, "commands neither run here, nor in ELSEWHERE, nor EXEMPT:\n" + "\n".join(unaccounted)
    stale = sorted(accounted - set(ALL_COMMANDS))
    assert not stale, "listed here but in no page (changed or removed?):\n" + "\n".join(stale)


@pytest.mark.parametrize("command", sorted(ELSEWHERE))
def test_the_test_named_for_a_command_holds_its_piece(command):
    test_file, piece = ELSEWHERE[command]
    assert piece in (ROOT / "tests" / test_file).read_text(), f"tests/{test_file} does not hold {piece!r}"


@pytest.mark.parametrize("command", [pytest.param(c, marks=pytest.mark.slow if c in SLOW else ()) for c in EVERYDAY_RUN])
def test_everyday_command_runs_as_written(command, quick_start, env, tmp_path):
    [given] = quick_start.glob("logs/train/runs/*")  # a finished run, for the commands that take <run>
    if "ckpt_path=logs/" in command:  # resuming continues the run in place: resume a copy
        shutil.copytree(given, tmp_path / "logs/train/runs" / given.name)
        run(command, tmp_path, env, ["trainer.max_steps=5"], run_dir=given.name)
        resumed = tmp_path / "logs/train/runs" / given.name
        has(resumed, *TRAINED, "csv/metrics.csv", "csv/metrics-1.csv")  # the first session's metrics are kept
        assert torch.load(resumed / "checkpoints/last.ckpt", weights_only=True)["global_step"] == 5
        first, after = (resumed / "train.log").read_text().split("--- resumed by: tagrank-train ckpt_path=logs/")
        assert first == (given / "train.log").read_text() and "resuming run" in after  # the run's log goes on
        card = (resumed / "README.md").read_text()  # the model card names the first command and the resume
        assert "- **command**: `tagrank-train " in card and "- **resumed by**: `tagrank-train ckpt_path=logs/" in card
        return
    made = run(command, tmp_path, env, run_dir=given)
    if command.startswith("tagrank-eval"):
        has(made, "metrics.json", *(["report.html"] if "report=true" in command else []))
        assert json.loads((made / "metrics.json").read_text())["split"] == ("val" if "split=val" in command else "test")
    elif "debug=fdr" in command:
        has(made, ".hydra/config.yaml")  # one batch of each stage: no checkpoint, no test
    else:
        has(made, *TRAINED, {"logger=tensorboard": "tensorboard/events.out.tfevents.*",
                             "logger=wandb": "wandb/offline-run-*"}.get(command.split()[-1], "csv/metrics.csv"))
    if "hidden_size=512" in command:
        assert torch.load(made / "checkpoints/best.ckpt", weights_only=True)["hyper_parameters"]["hidden_size"] == 512


def test_make_clean_removes_run_outputs_and_keeps_the_reference_results(tmp_path):
    made = ["logs/train/runs/a/checkpoints/last.ckpt", "outputs/x.log", "multirun/y.log", "results/bench.json",
            "results/bench_gpu.json"]
    kept = ["results/synthetic/table1.md", "results/flickr8k/fig3.png", "results/pascal07/table1.csv"]
    for name in made + kept:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(name)
    proc = subprocess.run(["make", "-f", str(ROOT / "Makefile"), "clean"], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert [n for n in made if (tmp_path / n).exists()] == []
    assert all((tmp_path / n).read_text() == n for n in kept)
