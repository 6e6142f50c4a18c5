"""Runs a user can trust (issue 12): any Trainer setting works, mistakes are named before any data work,
a resume with the wrong model changes nothing, and the prior is scored on the images the model was."""

from __future__ import annotations

import csv
import hashlib
import inspect
import json
import subprocess
import sys

import lightning
import pytest
import torch
from hydra.errors import ConfigCompositionException

from tagrank.errors import TagrankError
from tagrank.metrics import RankingMetrics
from tagrank.pipeline import build_data
from tagrank.cli.predict import main as predict_main
from tagrank.cli.train import main as train_main
from tagrank.cli.train import train

from .conftest import TINY, compose_cfg, run_command

# TINY trains 6 steps an epoch (96 images, batch 16) for 2 epochs.


@pytest.mark.parametrize("limits", [
    ["trainer.max_steps=3"],  # below one epoch
    ["trainer.check_val_every_n_epoch=3"],  # 2 epochs, a validation every 3rd
    ["trainer.max_epochs=-1", "trainer.max_steps=5", "trainer.check_val_every_n_epoch=null",
     "trainer.val_check_interval=8"],  # validation every 8 steps, 5 of them
], ids=["max_steps", "check_val_every_n_epoch", "val_check_interval"])
def test_a_run_ending_before_any_validation_validates_and_tests_its_final_weights(limits, tmp_path, cache_dir, caplog):
    with caplog.at_level("INFO", logger="tagrank"):
        value = train(compose_cfg(TINY + limits, tmp_path, cache_dir))
    said = [r.getMessage() for r in caplog.records if "no validation" in r.getMessage()]
    assert len(said) == 1 and "validated the final weights" in said[0] and "best.ckpt" in said[0]
    best = torch.load(tmp_path / "checkpoints/best.ckpt", weights_only=True)
    last = torch.load(tmp_path / "checkpoints/last.ckpt", weights_only=True)
    assert best["global_step"] == last["global_step"] > 0
    assert all(torch.equal(best["state_dict"][k], v) for k, v in last["state_dict"].items())  # the final weights
    assert f"val/ndcg_mean {value:.4f}" in said[0]  # what a sweeper gets is their validation
    assert json.loads((tmp_path / "metrics.json").read_text())["metrics"]["n_images"] == 48


def test_the_learning_rate_plateau_counts_validations_not_epoch_ends(tmp_path, cache_dir):
    # 4 epochs with a validation after every 2nd; with patience 0 every validation that does not beat
    # the best so far halves the learning rate, and nothing else may (an epoch end without a validation
    # brings no new value).
    train(compose_cfg(TINY + ["trainer.max_epochs=4", "trainer.check_val_every_n_epoch=2", "model.lr_patience=0",
                              "callbacks.early_stopping=null"], tmp_path, cache_dir))
    with open(tmp_path / "csv/metrics.csv") as f:
        scores = [float(row["val/ndcg_mean"]) for row in csv.DictReader(f) if row.get("val/ndcg_mean")]
    assert len(scores) == 2
    halvings = sum(score <= max(scores[:i]) * (1 + 1e-4) for i, score in enumerate(scores) if i > 0)
    last = torch.load(tmp_path / "checkpoints/last.ckpt", weights_only=True)
    assert last["optimizer_states"][0]["param_groups"][0]["lr"] == pytest.approx(4e-4 * 0.5**halvings)


def test_every_trainer_argument_is_a_setting_and_the_prior_is_scored_on_the_model_s_images(tmp_path, cache_dir):
    cfg = compose_cfg(TINY + ["trainer.limit_val_batches=1", "trainer.limit_test_batches=2", "data.eval_batch_size=16"],
                      tmp_path, cache_dir)
    from tagrank.config import NOT_TRAINER_SETTINGS  # (imported here: the test runs against older code too)

    arguments = set(inspect.signature(lightning.Trainer.__init__).parameters) - set(NOT_TRAINER_SETTINGS)
    assert arguments <= set(cfg.trainer)  # trainer.<any of them>= needs no +
    train(cfg)
    result = json.loads((tmp_path / "metrics.json").read_text())
    images = [json.loads(line)["image"] for line in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    assert result["metrics"]["n_images"] == len(images) == 32  # 2 test batches of 16
    dm = build_data(cfg)
    rows = [i for i, r in enumerate(dm.records) if r.image in set(images)]
    prior = RankingMetrics(10, sync_on_compute=False)
    prior.update(torch.arange(10).expand(len(rows), -1), dm.targets[rows])
    assert result["frequency_prior"] == pytest.approx({k: float(v) for k, v in prior.compute().items()})


def _tree(folder) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*"))
            if p.is_file()}


def test_a_new_run_in_a_finished_run_s_folder_is_refused_and_its_checkpoints_kept(tmp_path, cache_dir, cli_env):
    """E.g. an Optuna study continued into the sweep folder of its first trials: Hydra numbers the new trials'
    folders 0, 1, ... again, and the new trial 0 wrote over the first one's checkpoints."""
    run = tmp_path / "run"
    train(compose_cfg(TINY + ["trainer.max_epochs=1"], run, cache_dir))
    def kept_files() -> dict[str, str]:  # Hydra rewrites .hydra/ and adds to the log before tagrank runs
        return {k: v for k, v in _tree(run).items() if not k.startswith(".hydra") and not k.endswith(".log")}

    kept = kept_files()
    assert "checkpoints/best.ckpt" in kept and "checkpoints/last.ckpt" in kept
    proc = run_command(train_main, [*TINY, "model.dropout=0.3", f"hydra.run.dir={run}"], cli_env, tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1] == (
        f"tagrank: error: {run} already holds a run's checkpoints (best.ckpt, last.ckpt): a new run there would write "
        f"over them. Resume it with ckpt_path={run}/checkpoints/last.ckpt, or give this run a folder of its own "
        "(hydra.run.dir=..., or a new hydra.sweep.dir=... for a multirun)")
    assert kept_files() == kept


def test_resuming_with_other_model_settings_stops_at_once_and_leaves_the_run_untouched(tmp_path, cache_dir, cli_env):
    run = tmp_path / "run"
    first = ["model.dropout=0.25", "model.betas=[0.9,0.99]", "data.batch_size=32"]
    train(compose_cfg(TINY + first + ["trainer.max_epochs=1"], run, cache_dir))
    before = _tree(run)
    last = run / "checkpoints/last.ckpt"
    proc = run_command(train_main, [*TINY, "model=naive_rnn", f"ckpt_path={last}"], cli_env, tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1] == (f"tagrank: error: ckpt_path={last} was written by LSTMTagger, "
                                                   "not NaiveRNN: resume with model=lstm")
    assert "Traceback" not in proc.stderr
    assert _tree(run) == before  # metrics.csv not renamed, nothing written
    assert not list(tmp_path.glob("logs/train/runs/*"))  # nor an empty folder for the refused command
    with pytest.raises(TagrankError) as err:  # the same class, another setting and the first command's left out
        train(compose_cfg(TINY + ["model.hidden_size=64", f"ckpt_path={last}"], tmp_path / "again", cache_dir))
    assert str(err.value) == (
        f"ckpt_path={last} was trained with other settings (model.hidden_size=300 there, 64 here; model.dropout=0.25 "
        "there, 0.5 here; model.betas=[0.9, 0.99] there, [0.8, 0.999] here; data.batch_size=32 there, 16 here): "
        "resume with the settings it was trained with, model.hidden_size=300 model.dropout=0.25 model.betas=[0.9,0.99] "
        "data.batch_size=32")
    assert _tree(run) == before
    # The settings the message gives resume it, with a speed setting changed (allowed: not what it trains).
    given = str(err.value).rsplit("it was trained with, ", 1)[1].split()
    train(compose_cfg(TINY + given + ["data.eval_batch_size=8", f"ckpt_path={last}"], tmp_path / "again", cache_dir))
    assert torch.load(last, weights_only=True)["global_step"] == 2 * 96 // 32  # two epochs of batches of 32


@pytest.mark.parametrize("setting, message", [
    ("data.batch_size=-4", "data.batch_size=-4 is out of range: expected int > 0"),
    ("data.num_workers=x", "data.num_workers='x' has the wrong type: expected int"),
    ("data.n_train=0", "data.n_train=0: expected >= 1"),
    ("trainer.max_steps=-5", "trainer: `max_steps` must be a non-negative integer or -1"),
    ("trainer.limit_val_batches=1.5", "limit_val_batches, it has to be in [0.0, 1.0] or an int"),
    ("model.dropout=2", "model.dropout=2 is out of range: expected float >= 0 and < 1"),
    ("model.lr=-1e-3", "model.lr=-0.001 is out of range: expected float > 0"),
    ("model.relevance=lin", "model.relevance='lin' is not one of ['linear', 'inverse_log', 'binary']"),
    ("backbone.image_size=0", "backbone.image_size=0 is out of range: expected int > 0"),
    ("backbone.weights=/nowhere/w.pth", "backbone.weights='/nowhere/w.pth' does not exist"),
    ("ckpt_path=/nowhere/last.ckpt", "ckpt_path='/nowhere/last.ckpt' does not exist"),
    ("seed=abc", "seed='abc' has the wrong type: expected int"),
    ("trainer.max_epochs=abc", "trainer.max_epochs='abc' has the wrong type: expected int or null"),
    ("trainer.precision=bf17", "trainer.precision='bf17' has the wrong type: expected one of [64, 32, 16, "),
    ("seed=1.5", "seed=1.5 has the wrong type: expected int"),
    ("seed=-1", "seed=-1 is out of range: expected int >= 0 and <= 4294967295"),
    ("test=maybe", "test='maybe' has the wrong type: expected bool"),
])
def test_every_setting_is_checked_before_any_data_work(setting, message, tmp_path):
    cache = tmp_path / "cache"  # stays empty: no dataset is built, no feature computed
    with pytest.raises(TagrankError) as err:
        train(compose_cfg(TINY + [setting], tmp_path / "run", cache))
    assert message in str(err.value) and "\n" not in str(err.value)
    assert not cache.exists() or not any(cache.iterdir())


def test_a_validation_interval_longer_than_an_epoch_is_refused_before_the_features(tmp_path, cache_dir):
    # TINY: 96 training images in batches of 16, 6 batches an epoch. Counted over the whole run it is fine.
    with pytest.raises(TagrankError) as err:
        train(compose_cfg(TINY + ["trainer.val_check_interval=7"], tmp_path / "run", tmp_path / "cache"))
    assert str(err.value) == ("trainer.val_check_interval=7 is longer than an epoch (6 training batches of 16); set "
                              "trainer.check_val_every_n_epoch=null to count it over the whole run, or a value up to 6")
    assert not (tmp_path / "cache" / "features").exists()
    for limit, batches in (("3", 3), ("0.5", 3)):  # an epoch cut short by limit_train_batches, a count or a share
        with pytest.raises(TagrankError) as err:
            train(compose_cfg(TINY + ["trainer.val_check_interval=5", f"trainer.limit_train_batches={limit}"],
                              tmp_path / "run", tmp_path / "cache"))
        assert str(err.value) == (f"trainer.val_check_interval=5 is longer than an epoch ({batches} training batches of "
                                  f"16, trainer.limit_train_batches={limit}); set trainer.check_val_every_n_epoch=null "
                                  f"to count it over the whole run, or a value up to {batches}")
    assert not (tmp_path / "cache" / "features").exists()
    train(compose_cfg(TINY + ["trainer.val_check_interval=7", "trainer.check_val_every_n_epoch=null",
                              "trainer.max_steps=14", "trainer.max_epochs=-1", "test=false"], tmp_path / "whole", cache_dir))
    rows = list(csv.DictReader((tmp_path / "whole" / "csv" / "metrics.csv").open()))
    assert [int(r["step"]) for r in rows if r.get("val/ndcg_mean")] == [6, 13]  # after batches 7 and 14


@pytest.mark.parametrize("override, message", [
    ("trainer.max_stesp=5", "trainer.max_stesp is not a setting of trainer; expected one of ['accelerator', "),
    ("callbacks.early_stoping.patience=2", "callbacks.early_stoping is not a setting of callbacks; expected one of "
                                           "['model_checkpoint', 'early_stopping'"),
    ("model=lsmt", "In 'train': Could not find 'model/lsmt'; Available options in 'model': frequency; label_query; lstm; lstm_attention; lstm_tuned; naive_rnn"),
    ("trainer.max_steps=[5", "trainer.max_steps=[5: "),
])
def test_hydra_errors_are_one_line_naming_what_there_is(override, message, tmp_path):
    from tagrank.config import user_message  # (imported here: the other tests run against older code too)

    with pytest.raises(Exception) as err:
        compose_cfg([override], tmp_path, tmp_path)
    assert user_message(err.value).startswith(message) and "\n" not in user_message(err.value)


def test_changing_a_setting_of_a_group_nothing_chose_says_to_choose_it_first():
    """tagrank-eval takes the checkpoint run's data, so ``data.n_test=50`` alone has nothing to change (and a
    ``+data=...`` would not help): the message says to name a dataset first."""
    from hydra import compose, initialize_config_dir

    from tagrank import CONF_DIR
    from tagrank.config import user_message

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"), pytest.raises(Exception) as err:
        compose(config_name="eval", overrides=["ckpt_path=x.ckpt", "data.n_test=50"])
    assert user_message(err.value) == (
        "no data settings are chosen in this config, so there are none to change; choose them first: data=<one of "
        "['boxes', 'captions', 'coco', 'flickr8k', 'labelme', 'pascal07', 'synthetic']> before data.<setting>=...")
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):  # as it says, it composes
        assert compose(config_name="eval", overrides=["ckpt_path=x.ckpt", "data=synthetic", "data.n_test=50"]
                       ).data.n_test == 50


def test_a_setting_left_at_its_required_marker_is_named(tmp_path, cli_env):
    proc = subprocess.run(["tagrank-eval"], capture_output=True, text=True, env=cli_env, cwd=tmp_path, timeout=300)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1] == ("tagrank: error: ckpt_path is required: "
                                                                            "pass ckpt_path=...")


# A command line with a mistake, run by a new Python: what it answers, and which of the slow imports it made.
ANSWERED_BEFORE_IMPORTING = """
import sys
from tagrank.cli.{command} import main
sys.argv = ["tagrank-{command}", *sys.argv[1:]]
try:
    main()
except SystemExit as stop:
    print(stop.code, sorted(m for m in ("torch", "lightning", "wandb") if m in sys.modules))
"""


@pytest.mark.parametrize("command, args", [("train", ["trainer.max_stesp=5"]), ("train", ["seed=-1"]),
                                           ("eval", ["ckpt_path=/nowhere/best.ckpt"]), ("data", ["data=nosuch"])])
def test_a_mistake_on_the_command_line_is_answered_before_torch_and_lightning_are_imported(command, args, tmp_path,
                                                                                          cli_env):
    """They take seconds to import, which every process of a command paid before it read its command line."""
    proc = subprocess.run([sys.executable, "-c", ANSWERED_BEFORE_IMPORTING.format(command=command), *args],
                          capture_output=True, text=True, env=cli_env, cwd=tmp_path, timeout=300)
    assert proc.stdout.strip() == "2 []", (proc.stdout, proc.stderr[-2000:])
    assert proc.stderr.startswith("tagrank: error: ") and "Traceback" not in proc.stderr


def test_an_unquoted_value_with_letters_outside_ascii_says_to_quote_it(tmp_path, cli_env):
    """Hydra's lexer refuses ü or 写 in an unquoted value (LexerNoViableAltException and a caret): one line
    that gives the quoted override to type, exit 2; and the quoted override it gives composes."""
    from hydra import compose, initialize_config_dir

    from tagrank import CONF_DIR

    name = "img/ünïcödé_写真.jpg"
    proc = run_command(predict_main, ["ckpt_path=x.ckpt", f"images={name}"], cli_env, tmp_path)
    quoted = f"images='{name}'"
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1] == (
        f"tagrank: error: images={name}: a value with letters outside ASCII must be quoted for Hydra: pass "
        f"\"{quoted}\" (the double quotes are for the shell)"), proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and "LexerNoViableAltException" not in proc.stderr
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        assert compose(config_name="predict", overrides=["ckpt_path=x.ckpt", quoted]).images == name


def test_console_scripts_exit_2_for_hydra_errors_and_keep_a_crash_s_traceback(monkeypatch, capsys):
    from tagrank.config import console_main  # (imported here: the other tests run against older code too)

    monkeypatch.setenv("HYDRA_FULL_ERROR", "0")  # console_main sets it for the process; restored afterwards

    def bad_override():
        raise ConfigCompositionException("Could not override 'x'.\nTo append to your config use +x=1")

    with pytest.raises(SystemExit) as stop:
        console_main(bad_override)
    assert stop.value.code == 2
    assert capsys.readouterr().err == "tagrank: error: Could not override 'x'.; To append to your config use +x=1\n"

    def crash():
        raise RuntimeError("a bug")

    with pytest.raises(RuntimeError, match="a bug"):  # the traceback reaches the user, exit status 1
        console_main(crash)

    def ctrl_c():
        raise KeyboardInterrupt

    monkeypatch.setenv("HYDRA_FULL_ERROR", "0")  # (set to 1 by the call before)
    with pytest.raises(SystemExit) as stop:  # one line and the shell's status for SIGINT, no traceback
        console_main(ctrl_c)
    assert stop.value.code == 130 and capsys.readouterr().err == "tagrank: interrupted\n"
