"""End to end with the real Trainer, real Hydra and real pretrained weights, on a tiny synthetic set."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from tagrank.errors import TagrankError
from tagrank.cli.eval import evaluate
from tagrank.models.lstm import LSTMTagger
from tagrank.cli.train import main as train_main
from tagrank.cli.train import train

from .conftest import TINY, compose_cfg, run_command


def _train(tmp_path, cache_dir, *overrides):
    cfg = compose_cfg(TINY + list(overrides), tmp_path, cache_dir)
    value = train(cfg)
    return cfg, value


def test_fast_dev_run(tmp_path, cache_dir):
    _, value = _train(tmp_path, cache_dir, "debug=fdr")
    assert value is not None and 0.0 <= value <= 1.0  # val/ndcg_mean after one val batch


def test_train_writes_a_complete_run_and_eval_reproduces_it(tmp_path, cache_dir):
    cfg, value = _train(tmp_path, cache_dir)
    run = tmp_path
    for f in ("checkpoints/best.ckpt", "checkpoints/last.ckpt", "metrics.json", "predictions.jsonl", "csv/metrics.csv"):
        assert (run / f).is_file(), f
    metrics = json.loads((run / "metrics.json").read_text())
    assert set(metrics["metrics"]) >= {f"ndcg@{k}" for k in range(1, 11)} | {"ndcg_mean", "p_mean"}
    assert metrics["metrics"]["n_images"] == 48
    lines = [json.loads(line) for line in (run / "predictions.jsonl").read_text().splitlines()]
    assert len(lines) == 48 and all(len(set(x["predicted"])) == 10 for x in lines)
    header = (run / "csv/metrics.csv").read_text().splitlines()[0]
    assert "val/ndcg@10" in header and "val/p_mean" in header and "train/loss" in header

    # The checkpoint rebuilds without Hydra and without weights_only=False.
    model = LSTMTagger.load_from_checkpoint(run / "checkpoints/best.ckpt", map_location="cpu", weights_only=True)
    assert model.hparams.hidden_size == 300 and model.num_tags == model.out.out_features

    # tagrank-eval (the real console script) prints and writes the same numbers, and report.html beside them.
    again, stdout = _eval_cli(run, cfg, tmp_path / "eval", "report=true", progress_bar=True)
    assert again["metrics"] == metrics["metrics"]
    assert f"{metrics['metrics']['ndcg_mean']:.4f}" in stdout
    # Another backbone (or size) than the checkpoint's is refused before any feature is made under its name.
    other = compose_cfg([f"ckpt_path={run}/checkpoints/best.ckpt", "backbone=efficientnet_lite0",
                         "backbone.image_size=32"], tmp_path / "eval2", cfg.paths.cache_dir, config_name="eval")
    with pytest.raises(TagrankError, match=r"was trained with other settings \(backbone.image_size=64 there, 32 here\): "
                                           r"evaluate it with the backbone it was trained with .*backbone.image_size=64$"):
        evaluate(other)
    page = (tmp_path / "eval/report.html").read_text()
    assert page.count('<tr data-name="') == 48 and page.count("data:image/jpeg;base64,") == 48
    assert f"<td>Ours (LSTM)</td><td>{metrics['metrics']['ndcg_mean']:.4f}</td>" in page


def _eval_cli(run, cfg, out_dir, *overrides, progress_bar: bool = False):
    """Run the real ``tagrank-eval`` on ``run``'s best checkpoint; its metrics.json and stdout."""
    from omegaconf import OmegaConf

    # tagrank-eval needs the run's .hydra/config.yaml, which a real tagrank-train run writes.
    (run / ".hydra").mkdir(exist_ok=True)
    OmegaConf.save(cfg, run / ".hydra/config.yaml")
    proc = subprocess.run(
        [sys.executable, "-m", "tagrank.cli.eval", f"ckpt_path={run}/checkpoints/best.ckpt", f"hydra.run.dir={out_dir}",
         f"paths.cache_dir={cfg.paths.cache_dir}", f"trainer.enable_progress_bar={progress_bar}", *overrides],
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    if progress_bar:  # on stderr with the log lines: stdout holds the table alone
        assert "Testing" in proc.stderr and "Testing" not in proc.stdout
        assert proc.stdout.startswith(f"test split, {run}/checkpoints/best.ckpt\nmetric | @1 |")
    return json.loads((out_dir / "metrics.json").read_text()), proc.stdout


def test_staged_finetuning_unfreezes_the_backbone_and_tests_it(tmp_path, cache_dir, caplog):
    with caplog.at_level("INFO", logger="tagrank"):
        cfg, _ = _train(tmp_path, cache_dir, "model.finetune_after_steps=5", "trainer.max_steps=9",
                        "model.finetune_lr=0.001", "+callbacks.inputs._target_=tests.probes.BatchInputs")
    switches = [r.getMessage() for r in caplog.records if "backbone unfrozen" in r.getMessage()]
    assert switches == ["step 5: backbone unfrozen (lr 0.001, weight decay 0.001)"]  # once, at the step asked
    # Cached features alone until just before the switch (the batch Lightning fetches ahead), then images.
    inputs = (tmp_path / "batch_inputs.txt").read_text().split()
    assert inputs == [f"{s}:features" for s in range(4)] + [f"{s}:image" for s in range(4, 9)]
    ckpt = torch.load(tmp_path / "checkpoints/last.ckpt", map_location="cpu", weights_only=True)
    groups = ckpt["optimizer_states"][0]["param_groups"]
    assert len(groups) == 2 and groups[1]["lr"] == 0.001 and groups[1]["weight_decay"] == 0.001
    from tagrank.models.backbones import EfficientNetLite0, load_pretrained, resolve_weights

    ref = EfficientNetLite0()
    load_pretrained(ref, resolve_weights("efficientnet_lite0", None))
    tuned = {k[len("backbone."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("backbone.")}
    changed = [k for k, v in ref.state_dict().items() if v.is_floating_point() and not torch.equal(v, tuned[k])]
    assert "_conv_stem.weight" in changed
    assert not any("running_mean" in k for k in changed)  # BatchNorm statistics stay pretrained
    header = (tmp_path / "csv/metrics.csv").read_text().splitlines()[0]
    assert "lr-Adam/pg2" in header  # the second group's learning rate is logged

    # Every validation came after the switch, so the best checkpoint holds a fine-tuned backbone, and
    # the test numbers training printed must be those of that backbone on the images: the same numbers
    # tagrank-eval gets from the checkpoint alone (not those of the cached pretrained features).
    assert bool(torch.load(tmp_path / "checkpoints/best.ckpt", weights_only=True)["state_dict"]["backbone_finetuned"])
    trained = json.loads((tmp_path / "metrics.json").read_text())
    again, _ = _eval_cli(tmp_path, cfg, tmp_path / "eval")
    # The ranked lists give exact metrics; the loss is a float32 sum whose order depends on the kernels
    # the CPU picks (AVX2, AVX-512, default): 1e-7 apart seen, while another backbone is far more than 1e-5.
    losses = {k for k in trained["metrics"] if "loss" in k}
    assert {k: v for k, v in again["metrics"].items() if k not in losses} == \
        {k: v for k, v in trained["metrics"].items() if k not in losses}
    assert {k: again["metrics"][k] for k in losses} == pytest.approx({k: trained["metrics"][k] for k in losses}, rel=1e-5)


def test_run_resumed_just_before_the_switch_fine_tunes_as_if_never_stopped(tmp_path, cache_dir, caplog):
    # 6 steps per epoch: the first epoch ends on the step before the switch, the resumed run starts on it.
    schedule = ["model.finetune_after_steps=6", "model.finetune_lr=0.001",
                "+callbacks.inputs._target_=tests.probes.BatchInputs"]
    _train(tmp_path / "whole", cache_dir, *schedule)
    _train(tmp_path / "split", cache_dir, *schedule, "trainer.max_epochs=1")
    last = tmp_path / "split/checkpoints/last.ckpt"
    with caplog.at_level("INFO", logger="tagrank"):
        _train(tmp_path / "split", cache_dir, *schedule, f"ckpt_path={last}")
    assert "step 6: backbone unfrozen" in caplog.text
    # The resumed run's first batch already carries images, so the switch comes at the same step.
    assert (tmp_path / "split/batch_inputs.txt").read_text().split()[-6:] == [f"{s}:image" for s in range(6, 12)]
    whole = json.loads((tmp_path / "whole/metrics.json").read_text())["metrics"]
    split = json.loads((tmp_path / "split/metrics.json").read_text())["metrics"]
    assert split == whole


def test_run_resumed_after_the_switch_keeps_fine_tuning_on_images(tmp_path, cache_dir):
    schedule = ["model.finetune_after_steps=3", "model.finetune_lr=0.001",
                "+callbacks.inputs._target_=tests.probes.BatchInputs"]
    _train(tmp_path, cache_dir, *schedule, "trainer.max_epochs=1")
    _train(tmp_path, cache_dir, *schedule, f"ckpt_path={tmp_path / 'checkpoints/last.ckpt'}")
    assert (tmp_path / "batch_inputs.txt").read_text().split()[-6:] == [f"{s}:image" for s in range(6, 12)]
    ckpt = torch.load(tmp_path / "checkpoints/last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 12 and len(ckpt["optimizer_states"][0]["param_groups"]) == 2


def test_resume_from_last_checkpoint(tmp_path, cache_dir, caplog):
    _train(tmp_path / "a", cache_dir, "trainer.max_epochs=1")
    last = tmp_path / "a/checkpoints/last.ckpt"
    steps_one_epoch = torch.load(last, map_location="cpu", weights_only=True)["global_step"]
    with caplog.at_level("INFO"):
        _train(tmp_path / "a", cache_dir, "trainer.max_epochs=2", f"ckpt_path={last}")
    assert f"Restored all states from the checkpoint at {last}" in caplog.text
    ckpt = torch.load(last, map_location="cpu", weights_only=True)
    assert ckpt["epoch"] == 2 and ckpt["global_step"] == 2 * steps_one_epoch


@pytest.mark.parametrize("args, message", [
    (["model.hidden_size=abc"], "model.hidden_size='abc' has the wrong type: expected int"),
    (["+data.n_trian=5"], "data.n_trian is not a setting"),
    (["backbone=vgg16"], "pass backbone.weights=/path/to/vgg16.pth"),
    (["ckpt_path=/nowhere/last.ckpt"], "ckpt_path='/nowhere/last.ckpt' does not exist"),
    # Hydra's own errors (more of them in test_runs.py): an unknown key names the keys there are.
    (["model.hiden_size=5"], "model.hiden_size is not a setting of model; expected one of ['backbone', 'proj_dim'"),
    (["trainer.max_stesp=5"], "trainer.max_stesp is not a setting of trainer; expected one of ['accelerator', "),
])
def test_bad_input_is_one_clear_message(args, message, cli_env, tmp_path):
    """tagrank-train's entry in this process (a new Python would spend seconds importing torch first)."""
    proc = run_command(train_main, args, cli_env, tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1].startswith("tagrank: error: ")
    assert message in proc.stderr.strip().splitlines()[-1]
    assert "Traceback" not in proc.stderr


def test_the_console_script_says_bad_input_in_one_line_and_exits_2(cli_env, tmp_path):
    proc = subprocess.run(["tagrank-train", "trainer.max_stesp=5"], capture_output=True, text=True, env=cli_env,
                          timeout=600, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1].startswith("tagrank: error: trainer.max_stesp is not a setting of "
                                                           "trainer; expected one of ['accelerator', ")
    assert "Traceback" not in proc.stderr


def test_eval_names_a_folder_or_a_file_that_is_no_checkpoint(tmp_path):
    junk = tmp_path / "junk.ckpt"
    junk.write_text("not a checkpoint")
    for ckpt, message in ((tmp_path, f"ckpt_path='{tmp_path}' is a folder; pass <run>/checkpoints/best.ckpt"),
                          (junk, f"{junk}: not a readable checkpoint")):
        cfg = compose_cfg([f"ckpt_path={ckpt}"], tmp_path / "eval", tmp_path / "cache", config_name="eval")
        with pytest.raises(TagrankError) as err:
            evaluate(cfg)
        assert str(err.value).startswith(message) and "\n" not in str(err.value)
