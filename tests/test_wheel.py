"""A built wheel works on its own: ``pip install .`` (not editable) into a fresh virtual environment, then
``tagrank-train debug=fdr`` from an empty folder composes the configs shipped inside the package.

No network here: the wheel is built without build isolation, installed with ``--no-deps --no-index``, and
the fresh environment reuses this one's installed dependencies (torch, Lightning, ...) through a ``.pth``
line, after its own site-packages, so ``tagrank`` itself can only come from the wheel."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from omegaconf import OmegaConf

from .conftest import ROOT, TINY


def _pip(python: Path | str, *args: str, cwd: Path | None = None) -> None:
    proc = subprocess.run([str(python), "-m", "pip", "--disable-pip-version-check", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]


def test_the_wheel_installed_elsewhere_trains_from_an_empty_folder(tmp_path, cache_dir):
    src = tmp_path / "src"  # a copy, so the build's egg-info and build/ never land in the checkout
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "tagrank", src / "tagrank", ignore=shutil.ignore_patterns("__pycache__"))
    _pip(sys.executable, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(tmp_path / "dist"), ".",
         cwd=src)
    [wheel] = (tmp_path / "dist").glob("tagrank-*.whl")

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=300)
    python = venv / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    # Every site folder this interpreter reads (its own, and any a .pth of it chains to): not the checkout.
    here = [p for p in sys.path if Path(p).name in ("site-packages", "dist-packages")]
    (site / "reuse_dependencies.pth").write_text("\n".join(here) + "\n")
    _pip(python, "install", "--no-deps", "--no-index", str(wheel))

    empty = tmp_path / "empty"
    empty.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "TAGRANK_LOGS")}
    env.update(TAGRANK_CACHE=str(cache_dir), WANDB_MODE="offline", PYTHONUNBUFFERED="1")
    proc = subprocess.run([str(venv / "bin" / "tagrank-train"), "debug=fdr", *TINY], cwd=empty, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]

    [run] = empty.glob("logs/train/runs/*")  # the run landed in the empty folder, as paths.log_dir says
    hydra = OmegaConf.load(run / ".hydra/hydra.yaml").hydra
    [main] = [s for s in hydra.runtime.config_sources if s.schema == "file" and s.provider == "main"]
    assert Path(main.path).resolve() == (site / "tagrank" / "conf").resolve()  # the wheel's configs, not the checkout's
    assert (Path(main.path) / "model" / "lstm.yaml").is_file()
