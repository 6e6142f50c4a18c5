"""A folder that cannot take a file (full, read-only) is one line naming it and what to set, and leaves
nothing half-written: caches, checkpoints, and tagrank-train's real entry (run in this process). Full and
read-only file systems are real ones (a small tmpfs, a read-only bind mount: see conftest), since root
ignores chmod."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import torch

from tagrank import files
from tagrank.data import cache
from tagrank.data.sources.base import ensure_built
from tagrank.data.synthetic import SyntheticSource
from tagrank.cli.train import main as train_main
from tagrank.pipeline import AtomicCheckpointIO

from .conftest import TINY, run_command


def test_a_cache_file_too_big_for_the_disk_names_the_folder_and_tagrank_cache(small_disk):
    path = small_disk / "features" / "x.pt"
    with pytest.raises(files.CannotWrite, match=rf"^cannot write {path}: its folder {path.parent} is full \(no space "
                                                r"left on the device\); free space there, or set TAGRANK_CACHE"):
        cache.write(path, files.torch_saver({"features": torch.ones(200_000)}), count=1, unit="rows")
    assert list(path.parent.iterdir()) == []  # no temporary file, no file without its checksum


def test_torch_s_unexpected_pos_on_a_full_disk_is_said_as_a_full_disk(small_disk):
    """torch.save writing straight to the file reports ENOSPC as "unexpected pos N vs M" (a RuntimeError)."""
    with pytest.raises(RuntimeError, match="unexpected pos"):
        torch.save({"x": torch.ones(200_000)}, small_disk / "direct.pt")
    (small_disk / "direct.pt").unlink()
    path = small_disk / "model.pt"
    with pytest.raises(files.CannotWrite, match=rf"its folder {small_disk} is full"):
        files.atomic_write(path, lambda tmp: torch.save({"x": torch.ones(200_000)}, tmp))
    assert list(small_disk.iterdir()) == []


def test_a_checkpoint_on_a_full_disk_names_the_folder_and_tagrank_logs(small_disk):
    path = small_disk / "checkpoints" / "last.ckpt"
    with pytest.raises(files.CannotWrite, match=r"is full \(no space left on the device\); free space there, or set "
                                                r"TAGRANK_LOGS"):
        AtomicCheckpointIO().save_checkpoint({"state_dict": {"w": torch.ones(200_000)}}, path)
    assert list(path.parent.iterdir()) == []


def test_a_dataset_built_into_a_read_only_cache_names_it_and_leaves_nothing(read_only_folder):
    source = SyntheticSource(n_train=4, n_val=2, n_test=2, render_size=32)
    with pytest.raises(files.CannotWrite, match=rf"^cannot write {read_only_folder}/\S+: its folder {read_only_folder} "
                                                r"is on a read-only file system; .*TAGRANK_CACHE"):
        ensure_built(source, read_only_folder)
    assert sorted(p.name for p in read_only_folder.iterdir()) == ["kept.txt"]


def test_a_dataset_built_onto_a_full_disk_leaves_no_half_built_folder(small_disk):
    source = SyntheticSource(n_train=200, n_val=50, n_test=50, render_size=64)
    with pytest.raises(files.CannotWrite, match=rf"its folder {small_disk} is full"):
        ensure_built(source, small_disk)
    assert list(small_disk.iterdir()) == []


def test_train_with_a_read_only_cache_exits_2_with_one_line(read_only_folder, tmp_path):
    env = {**os.environ, "TAGRANK_CACHE": str(read_only_folder), "TAGRANK_LOGS": str(tmp_path / "logs"),
           "PYTHONUNBUFFERED": "1"}
    proc = run_command(train_main, TINY, env, tmp_path)
    assert proc.returncode == 2, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"tagrank: error: cannot write {read_only_folder}/"), last
    assert last.endswith(f"its folder {read_only_folder} is on a read-only file system; free space there, or set "
                         "TAGRANK_CACHE to a writable folder with space"), last
    assert "Traceback" not in proc.stderr
    assert sorted(p.name for p in read_only_folder.iterdir()) == ["kept.txt"]


def test_every_output_file_is_written_through_tagrank_files():
    """No module writes a file with Path.write_text/write_bytes: a kill or a full disk would leave half of it
    (a download's completion marker, a dataset's skipped.json or source.json), and a folder's fault would be
    a traceback. tagrank.files (and the cache's checksummed writes built on it) are the one way out."""
    root = Path(files.__file__).parent
    found = [f"{path.relative_to(root)}:{n}" for path in sorted(root.rglob("*.py")) if path.name != "files.py"
             for n, line in enumerate(path.read_text().splitlines(), 1)
             if re.search(r"(?<!cache)\.write_(text|bytes)\(", line)]  # cache.write_text checksums, through files
    assert found == []
