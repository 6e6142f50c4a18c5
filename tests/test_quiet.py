"""A run prints what a user needs (the run summary, the table) and no framework noise, and leaves a model
card: a real ``tagrank-train`` and ``tagrank-eval`` through their console scripts, with tiny limits."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tagrank.report.card import git_commit

from .conftest import ROOT, TINY

BIN = Path(sys.executable).parent

# What a default run printed before tagrank/quiet.py, the configure_callbacks fix and the run summary.
NOISE = {
    "litlogger tip": r"litlogger",
    "litmodels tip": r"litmodels",
    "LeafSpec deprecation (x3)": r"LeafSpec",
    "configure_callbacks override": r"will override existing callbacks",
    "GPU/TPU availability": r"^(GPU|TPU) available: ",
    "Lightning's weights_only default (save_checkpoint without it)": r"`weights_only` was not set",
    "our own WARNING (finetune_after_steps beyond the run)": r"\[WARNING\]",
    "any Python warning (its file:line)": r"\.py:\d+: ",
    # issue 23's noise
    "fewer training batches than the logging interval": r"smaller than the logging interval",
    "Lightning's checkpoint restore lines at every test": r"Restoring states from|Loaded model weights from",
    "torchmetrics' nan warning": r"Encountered `nan` values",
}

# TINY with Lightning's logging interval (50 steps) left as it is: 6 batches an epoch, a short run.
SHORT = [arg for arg in TINY if not arg.startswith("trainer.log_every_n_steps=")]


def console(script: str, args: list[str], cwd: Path, cache: Path) -> str:
    env = {k: v for k, v in os.environ.items() if k != "TAGRANK_LOGS"}
    env.update(TAGRANK_CACHE=str(cache), PYTHONUNBUFFERED="1")
    proc = subprocess.run([str(BIN / script), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    return out


def noise_in(output: str) -> dict[str, list[str]]:
    """The output's lines that match each kind of noise (none, in a quiet run)."""
    lines = output.splitlines()
    found = {name: [line for line in lines if re.search(pattern, line)] for name, pattern in NOISE.items()}
    return {name: hits for name, hits in found.items() if hits}


@pytest.fixture(scope="module")
def trained(tmp_path_factory, cache_dir) -> tuple[Path, str]:
    """A default ``tagrank-train`` (the paper's LSTM, whose fine-tuning switch lies beyond the run) and its output."""
    cwd = tmp_path_factory.mktemp("quiet")
    out = console("tagrank-train", [*SHORT, "trainer.max_steps=3"], cwd, cache_dir)
    [run] = cwd.glob("logs/train/runs/*")
    return run, out


def ndcg_row(text: str) -> list[float]:
    """The cells of the first NDCG row of a printed table."""
    row = next(line for line in text.splitlines() if line.startswith("NDCG"))
    return [float(cell) for cell in row.split("|")[1:]]


def test_train_prints_the_summary_and_the_table_and_no_framework_noise(trained):
    run, out = trained
    assert noise_in(out) == {}
    assert f"[tagrank][INFO] - run {run}\n" in out
    for key in ("data", "vocabulary", "backbone", "method", "schedule"):
        assert re.search(rf"\[tagrank\]\[INFO\] -   {key} +\S", out), key
    # The default schedule's switch (7500 steps) beyond the run: said once, as information.
    assert out.count("the backbone stays frozen: model.finetune_after_steps=7500 is beyond them") == 1
    assert "test split, " in out and "frequency prior" in out
    assert ndcg_row(out[out.index("test split, "):])[-1] == pytest.approx(
        json.loads((run / "metrics.json").read_text())["metrics"]["ndcg_mean"], abs=5e-5)


def test_model_card_names_the_data_schedule_command_commit_and_test_table(trained):
    run, out = trained
    card = (run / "README.md").read_text()
    metrics = json.loads((run / "metrics.json").read_text())["metrics"]
    assert "- **data**: synthetic: 96 / 32 / 48 train / val / test images" in card
    assert "- **backbone**: efficientnet_lite0 at 64 px" in card
    assert "- **method**: lstm (LSTMTagger): " in card and "hidden_size=300" in card
    assert "- **schedule**: at most 3 steps; the backbone stays frozen" in card
    assert "- **trained**: 3 steps; kept best.ckpt" in card
    assert f"- **command**: `tagrank-train {' '.join(SHORT)} trainer.max_steps=3`" in card
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    assert f"- **commit**: {head or 'unknown (not a git checkout)'}" in card
    # The test table as the run printed it, per k and the mean, equal to metrics.json.
    table = card[card.index("## Test (test split, "):]
    assert ndcg_row(table) == ndcg_row(out[out.index("test split, "):])
    assert ndcg_row(table) == pytest.approx([metrics[f"ndcg@{k}"] for k in range(1, 11)] + [metrics["ndcg_mean"]],
                                            abs=5e-5)


def test_eval_prints_no_framework_noise(trained, cache_dir):
    run, _ = trained
    out = console("tagrank-eval", [f"ckpt_path={run}/checkpoints/best.ckpt", "trainer.enable_progress_bar=false"],
                  run.parents[3], cache_dir)
    assert noise_in(out) == {}
    assert ndcg_row(out[out.index("test split, "):]) == ndcg_row((run / "README.md").read_text().split("## Test")[1])


def test_resumed_run_prints_no_noise_and_its_card_names_both_commands(trained, cache_dir, tmp_path):
    run, _ = trained
    copy = tmp_path / "logs/train/runs" / run.name  # resuming continues the run in place: resume a copy
    shutil.copytree(run, copy)
    out = console("tagrank-train", [*SHORT, "trainer.max_steps=4", f"ckpt_path={copy}/checkpoints/last.ckpt"],
                  tmp_path, cache_dir)
    # The copy is a moved run, which Lightning rightly notes (its best score is not reloaded); nothing else.
    moved = "model_checkpoint.py:566: The dirpath has changed from"
    assert noise_in("\n".join(line for line in out.splitlines() if moved not in line)) == {}
    assert "exists and is not empty" not in out
    card = (copy / "README.md").read_text()
    assert f"- **command**: `tagrank-train {' '.join(SHORT)} trainer.max_steps=3`" in card
    assert f"- **resumed by**: `tagrank-train {' '.join(SHORT)} trainer.max_steps=4 ckpt_path={copy}/" in card
    assert "- **trained**: 4 steps; kept best.ckpt" in card


def test_commit_says_dirty_and_not_a_git_checkout(tmp_path):
    repo = tmp_path / "repo"
    (repo / "tagrank").mkdir(parents=True)
    (repo / "tagrank" / "__init__.py").write_text("")
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
    for args in (["init", "-q"], ["add", "."], ["commit", "-qm", "x"]):
        subprocess.run([*git, *args], check=True)
    head = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    assert git_commit(repo / "tagrank") == head
    (repo / "tagrank" / "__init__.py").write_text("x = 1\n")
    assert git_commit(repo / "tagrank") == f"{head} (dirty)"
    # A copy of the package inside another repository (an installed one, say) is not that repository's.
    (repo / "site" / "tagrank").mkdir(parents=True)
    assert git_commit(repo / "site" / "tagrank") == "unknown (not a git checkout)"
    assert git_commit(tmp_path / "elsewhere" / "tagrank") == "unknown (not a git checkout)"
