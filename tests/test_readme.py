"""The README's commands run as written: the quick start and every everyday command, through the real
console scripts and Makefile, with only the tests' tiny limits appended (TINY, and 3 training steps:
below one epoch, so a short run is what they exercise)."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from .conftest import ROOT, TINY

README = (ROOT / "README.md").read_text()
BIN = Path(sys.executable).parent  # this venv's console scripts (the README's .venv/bin)
LIMITS = [*TINY, "trainer.max_steps=3"]

# Not run here, and why.
EXEMPT = {
    "make install": "creates .venv and installs tagrank and its dependencies from the package index (network)",
    "make test": "runs this test suite",
    "tagrank-train backbone=vgg16 backbone.weights=/path/vgg16.pth": "needs a VGG16 weights file (528 MB, not "
                                                                       "shipped; tagrank never downloads weights)",
}


def commands(after: str) -> list[str]:
    """The commands of the first bash block after the line ``after``, without their comments."""
    start = README.index("```bash", README.index(after)) + len("```bash")
    block = README[start:README.index("```", start)]
    return [line.split("  #")[0].strip() for line in block.splitlines() if line.strip()]


QUICK_START = commands("# tagrank")
EVERYDAY = commands("## Everyday commands")


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


def test_every_readme_command_is_run_here_or_exempt_with_a_reason():
    assert QUICK_START[2:] == ["make train",
                               ".venv/bin/tagrank-eval ckpt_path=logs/train/runs/<run>/checkpoints/best.ckpt"]
    assert "or logger=wandb" in README
    written = set(EVERYDAY_RUN) - {"tagrank-train logger=wandb"}  # that one is in a comment
    assert set(QUICK_START) | set(EVERYDAY) == {*QUICK_START[2:], *written, *EXEMPT}


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
