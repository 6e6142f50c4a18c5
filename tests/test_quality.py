"""The trained LSTM beats the frequency prior clearly on held-out synthetic images (slow)."""

from __future__ import annotations

import json

import pytest

from tagrank.cli.train import train

from .conftest import compose_cfg


@pytest.mark.slow
def test_lstm_beats_frequency_prior(tmp_path, cache_dir):
    cfg = compose_cfg(["data.n_train=1500", "data.n_val=200", "data.n_test=400", "trainer.max_epochs=10",
                       "trainer.enable_progress_bar=false"], tmp_path, cache_dir)
    train(cfg)
    result = json.loads((tmp_path / "metrics.json").read_text())
    ours, prior = result["metrics"], result["frequency_prior"]
    assert ours["ndcg_mean"] > prior["ndcg_mean"] + 0.15, (ours["ndcg_mean"], prior["ndcg_mean"])
    assert ours["p_mean"] > prior["p_mean"] + 0.1
