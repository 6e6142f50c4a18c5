"""Shared fixtures: real configs composed with Hydra, small real datasets, isolated caches."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, open_dict

import tagrank.config  # noqa: F401  (registers the Trainer schema that conf/trainer/default.yaml builds on)
from tagrank import CONF_DIR

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
SHARED_DATA = SHARED / "data"

# A synthetic dataset small enough to build, extract and train on in seconds.
TINY = [
    "data.n_train=96", "data.n_val=32", "data.n_test=48", "data.render_size=64",
    "backbone.image_size=64", "trainer.max_epochs=2", "trainer.enable_progress_bar=false",
    "trainer.log_every_n_steps=2",
]


def needs_shared(sub: str = "") -> pytest.MarkDecorator:
    path = SHARED_DATA / sub
    return pytest.mark.skipif(not path.exists(), reason=f"{path} is absent (../shared is beside the project root on developer and CI machines)")


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """One cache per test session: datasets and features built once are reused by later tests."""
    return tmp_path_factory.mktemp("cache")


def compose_cfg(overrides: list[str], out_dir: Path, cache: Path, config_name: str = "train") -> DictConfig:
    """The real Hydra composition of conf/<config_name>.yaml, with paths pointed at temp folders."""
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name=config_name, overrides=overrides)
    with open_dict(cfg):
        cfg.paths.output_dir = str(out_dir)
        cfg.paths.cache_dir = str(cache)
        cfg.paths.log_dir = str(out_dir / "logs")
    return cfg


@pytest.fixture
def cli_env(tmp_path, cache_dir) -> dict[str, str]:
    """Environment for running the console scripts for real, with logs and caches in temp folders."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # the venv's console scripts
    env.update(TAGRANK_CACHE=str(cache_dir), TAGRANK_LOGS=str(tmp_path / "logs"), WANDB_MODE="offline",
               PYTHONUNBUFFERED="1")
    return env


def run_command(main, args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    """A console script's ``main`` (``tagrank.cli.train.main``: its real Hydra entry, error handling and exit
    status) run in this process with ``args`` as its command line in ``cwd``, answered as ``subprocess.run``
    answers. For the cases that stop on a bad setting: each saves the seconds a new Python spends importing
    torch and Lightning; every command keeps tests of its console script run for real. Hydra's global state,
    the logging it configures, the environment, the working directory and the warning filters are put back."""
    import contextlib
    import io
    import logging
    import warnings

    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

    root, saved_env, saved_argv, saved_cwd = logging.getLogger(), dict(os.environ), sys.argv, os.getcwd()
    saved_root = (root.handlers[:], root.level)
    loggers = {name: (lg.handlers[:], lg.filters[:], lg.level, lg.propagate, lg.disabled)
               for name, lg in logging.Logger.manager.loggerDict.items() if isinstance(lg, logging.Logger)}
    stdout, stderr = io.StringIO(), io.StringIO()
    argv = [f"tagrank-{main.__module__.rsplit('.', 1)[-1]}", *args]
    os.environ.clear()
    os.environ.update(env)
    sys.argv = argv
    os.chdir(cwd)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(stdout):
            try:
                main()
                status = 0
            except SystemExit as exit:
                status = exit.code if isinstance(exit.code, int) else 1
    finally:
        os.chdir(saved_cwd)
        sys.argv = saved_argv
        os.environ.clear()
        os.environ.update(saved_env)
        GlobalHydra.instance().clear()
        HydraConfig.instance().cfg = None
        for handler in root.handlers:
            if handler not in saved_root[0]:
                handler.close()
        root.handlers[:], root.level = saved_root
        for name, (handlers, filters, level, propagate, disabled) in loggers.items():
            lg = logging.getLogger(name)
            lg.handlers[:], lg.filters[:], lg.level, lg.propagate, lg.disabled = handlers, filters, level, propagate, disabled
    return subprocess.CompletedProcess(argv, status, stdout.getvalue(), stderr.getvalue())


COCO = SHARED_DATA / "coco-mini"


def train_on_coco_mini(tmp_path_factory, cache_dir: Path, kind: str, *overrides: str) -> tuple[Path, DictConfig]:
    """An LSTM trained for 4 steps on coco-mini's real photos (64 px), its best checkpoint tested
    (``predictions.jsonl``): ``kind`` "frozen" or "finetuned" (the backbone, as the overrides make it)."""
    from tagrank.cli.train import train

    if not COCO.exists():
        pytest.skip(f"{COCO} is absent (../shared is beside the project root on developer and CI machines)")
    run = tmp_path_factory.mktemp(f"coco-{kind}")
    cfg = compose_cfg(["data=coco", f"data.root={COCO}", "backbone.image_size=64", "trainer.enable_progress_bar=false",
                       "trainer.max_steps=4", *overrides], run, cache_dir)
    train(cfg)
    finetuned = torch.load(run / "checkpoints/best.ckpt", weights_only=True)["state_dict"]["backbone_finetuned"]
    assert bool(finetuned) == (kind == "finetuned")
    return run, cfg


@pytest.fixture(scope="session")
def coco_run(tmp_path_factory, cache_dir) -> tuple[Path, DictConfig]:
    """The frozen-backbone LSTM of :func:`train_on_coco_mini`, trained once per session (predict, export)."""
    return train_on_coco_mini(tmp_path_factory, cache_dir, "frozen")


def _mount(*args: str) -> str | None:
    """Run mount/umount; the reason it failed (not root, no mount namespace), or None."""
    import subprocess

    try:
        proc = subprocess.run(list(args), capture_output=True, text=True, timeout=30)
    except OSError as err:
        return str(err)
    return None if proc.returncode == 0 else (proc.stderr.strip() or f"{args[0]} exited {proc.returncode}")


@pytest.fixture
def small_disk(tmp_path) -> Path:
    """A folder on its own 256 KiB file system (tmpfs): writes beyond that fail with ENOSPC, as on a full
    disk. Needs root (mount); skipped with the reason where mounting is not allowed."""
    folder = tmp_path / "small-disk"
    folder.mkdir()
    reason = _mount("mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(folder))
    if reason:
        pytest.skip(f"cannot mount a small tmpfs to fill (needs root): {reason}")
    yield folder
    _mount("umount", "-l", str(folder))


@pytest.fixture
def read_only_folder(tmp_path) -> Path:
    """A folder on a read-only bind mount: writes fail with EROFS even for root (a chmod does not stop root).
    Its content (a file ``kept.txt``) stays readable. Skipped with the reason where mounting is not allowed."""
    source, folder = tmp_path / "ro-source", tmp_path / "read-only"
    source.mkdir()
    folder.mkdir()
    (source / "kept.txt").write_text("kept\n")
    reason = _mount("mount", "--bind", str(source), str(folder))
    if reason:
        pytest.skip(f"cannot bind-mount a read-only folder (needs root): {reason}")
    reason = _mount("mount", "-o", "remount,ro,bind", str(folder))
    if reason:
        _mount("umount", "-l", str(folder))
        pytest.skip(f"cannot remount read-only: {reason}")
    yield folder
    _mount("umount", "-l", str(folder))
