"""What a checkpoint holds (tagrank.checkpoint), read back by eval, predict and export; and the
vocabulary a model is used with must be its own, names and order, not just as many tags."""

from __future__ import annotations


import pytest
import torch
from omegaconf import OmegaConf

from .conftest import TINY, compose_cfg, run_command

# The tiny run's data; data.seed=7 makes a vocabulary of the same 24 tags in another order.
DATA = [o for o in TINY if o.startswith("data.")] + ["data.seed=1"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, cache_dir):
    """An LSTM trained for a few steps on the tiny synthetic set, with the run config tagrank-eval reads."""
    from tagrank.cli.train import train

    run = tmp_path_factory.mktemp("tiny-run")
    cfg = compose_cfg(TINY + ["data.seed=1", "trainer.max_epochs=1", "test=false"], run, cache_dir)
    train(cfg)
    (run / ".hydra").mkdir(exist_ok=True)
    OmegaConf.save(cfg, run / ".hydra/config.yaml")
    return run, cfg


def test_a_checkpoint_holds_the_keys_earlier_versions_wrote_and_loads_without_them(tiny_run, tmp_path):
    """The key names are the file format: written as tagrank always wrote them (literally here, so a
    rename is caught), and a checkpoint from before a key existed still loads."""
    from tagrank import checkpoint
    from tagrank.models.lstm import LSTMTagger

    run, cfg = tiny_run
    path = run / "checkpoints/best.ckpt"
    saved = torch.load(path, map_location="cpu", weights_only=True)
    assert saved["tagrank_class"] == "tagrank.models.lstm.LSTMTagger"
    assert saved["tagrank_inputs"]["image_size"] == 64 and len(saved["tagrank_inputs"]["tags"]) == 24
    assert saved["tagrank_settings"]["data.seed"] == 1 and saved["tagrank_settings"]["seed"] == cfg.seed
    assert set(saved["lr_plateau"]) >= {"best", "num_bad_epochs"}
    assert saved["state_dict"]["backbone_finetuned"].item() is False
    assert checkpoint.model_class(path) == "tagrank.models.lstm.LSTMTagger"
    assert checkpoint.inputs(saved) == (saved["tagrank_inputs"]["tags"], 64)
    assert checkpoint.trained_with(saved)["model.hidden_size"] == 300

    # As written before tagrank kept its own entries: the weights and hyperparameters only.
    for key in ("tagrank_inputs", "tagrank_settings", "lr_plateau"):
        del saved[key]
    del saved["state_dict"]["backbone_finetuned"]
    old = tmp_path / "old.ckpt"
    torch.save(saved, old)
    model = LSTMTagger.load_from_checkpoint(old, map_location="cpu", weights_only=True)
    assert not model.is_finetuned and model.num_tags == 24
    assert checkpoint.inputs(torch.load(old, weights_only=True)) is None
    assert set(checkpoint.trained_with(torch.load(old, weights_only=True))) == {f"model.{k}" for k in model.hparams}


def test_eval_refuses_another_vocabulary_of_the_same_size(tiny_run, tmp_path, cli_env):
    """Issue 23, fault 1: as many tags, other names (another seed of the synthetic data) scored nothing
    but wrong; one line naming the first tags that differ, exit 2, nothing written."""
    run, cfg = tiny_run
    from tagrank.cli.eval import main

    proc = run_command(main, [f"ckpt_path={run}/checkpoints/best.ckpt", f"hydra.run.dir={tmp_path}/eval",
                              f"paths.cache_dir={cfg.paths.cache_dir}", "data=synthetic", *DATA, "data.seed=7"],
                       cli_env, tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert "Traceback" not in proc.stderr
    assert last.startswith(f"tagrank: error: {run}/checkpoints/best.ckpt: the model's 24 tags are not those of "
                           "data=tagrank.data.synthetic.SyntheticSource (tag 0: 'red_star' there, 'red_circle' here; ")
    assert last.endswith("; evaluate on the data it was trained on")
    assert not (tmp_path / "eval/metrics.json").exists()
