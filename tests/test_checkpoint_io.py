"""Checkpoints are replaced whole or not at all."""

from __future__ import annotations

import pytest
import torch

import tagrank.pipeline as pipeline
from tagrank.pipeline import AtomicCheckpointIO


def test_a_failed_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    io = AtomicCheckpointIO()
    path = tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint({"step": 1, "w": torch.ones(3)}, path)
    assert io.load_checkpoint(path)["step"] == 1

    def dies_half_way(obj, f):  # f: a path, or the buffer a checkpoint is serialised into first
        if hasattr(f, "write"):
            f.write(b"PK\x03\x04 half")
        else:
            with open(f, "wb") as fh:
                fh.write(b"PK\x03\x04 half")
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline.torch, "save", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"step": 2, "w": torch.zeros(3)}, path)
    monkeypatch.undo()
    assert io.load_checkpoint(path)["step"] == 1  # the old file, intact
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.ckpt"]  # no temporary left behind
