"""Sweeps, cluster launches, DDP, the W&B dashboard and runs that survive being killed, for real and tiny.

Fast: an Optuna sweep that continues from its database and survives diverged trials, every search config's
values checked against its model and the label-query search run for real (2 trials), a submitit_local
launch of a grid sweep, a W&B offline run read back from its files (and continued after a resume), a
diverged run that stops cleanly, and the launcher configs turned into a real sbatch script.
Slow (``-m slow``): DDP with 2 CPU processes against 1 process, a run killed with SIGKILL mid-epoch
and resumed, a SLURM-style preemption (SIGUSR1, checkpoint, requeue, restart), and the scorer's and the
attention LSTM's searches run for real.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import torch
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from tagrank import CONF_DIR
from tagrank.config import check_node
from tagrank.errors import TagrankError
from tagrank.cli.train import main as train_main
from tagrank.cli.train import train

from .conftest import TINY, compose_cfg, run_command
from .wandb_records import offline_runs, read_offline_run

# A small LSTM on the tiny synthetic set: every run below takes seconds of training.
SMALL = TINY + ["model.hidden_size=32", "model.proj_dim=16", "model.finetune_after_steps=0"]


def own_wandb(env: dict) -> dict:
    """A process with its own wandb service. wandb puts its service's address in the environment
    (WANDB_SERVICE) so that child processes share it; after the in-process W&B test that would be this
    pytest process's service, which still holds the run of a process killed with SIGKILL."""
    return {k: v for k, v in env.items() if k != "WANDB_SERVICE"}


def run_cli(args: list[str], env: dict, cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(["tagrank-train", *args], capture_output=True, text=True, env=own_wandb(env), cwd=cwd,
                          timeout=timeout)


def ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-5000:])
    return proc


def metrics_of(run: Path) -> dict:
    """The test metrics a run wrote (metrics.json)."""
    return json.loads((run / "metrics.json").read_text())["metrics"]


def sweep_dirs(logs: Path) -> list[Path]:
    return sorted(p for p in (logs / "train" / "multiruns").iterdir() if p.is_dir())


# -- Optuna -------------------------------------------------------------------------------------------


def test_optuna_sweep_continues_from_its_database_and_survives_diverged_trials(cli_env, tmp_path):
    db = tmp_path / "optuna.db"
    common = ["hparams_search=lstm_optuna", f"hydra.sweeper.storage=sqlite:///{db}", "hydra.sweeper.study_name=t",
              *TINY, "model.finetune_after_steps=0", "trainer.max_epochs=1",
              # the configured search space, narrowed to small models for speed (TPE over all four)
              "model.hidden_size=choice(16,32)", "model.proj_dim=choice(8,16)"]
    logs = Path(cli_env["TAGRANK_LOGS"])

    first = ok(run_cli([*common, "hydra.sweeper.n_trials=2"], cli_env, tmp_path))
    (sweep1,) = sweep_dirs(logs)
    study = optuna.load_study(study_name="t", storage=f"sqlite:///{db}")
    values = [t.value for t in study.trials]
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"]
    searched = {"model.lr", "model.hidden_size", "model.proj_dim", "model.dropout"}
    assert all(set(t.params) == searched for t in study.trials)
    for job in ("0", "1"):  # one run directory per trial, each a complete run
        assert (sweep1 / job / "metrics.json").is_file() and (sweep1 / job / "checkpoints/last.ckpt").is_file()
    best = yaml.safe_load((sweep1 / "optimization_results.yaml").read_text())
    assert best["best_value"] == pytest.approx(max(values))
    assert "Study name: t" in first.stdout + first.stderr

    # The same command, the same database: the study goes on (trial numbers 2, 3). Both new trials
    # diverge (lr 1e37); each is recorded as failed and the second one still runs after the first.
    second = ok(run_cli([*common, "hydra.sweeper.n_trials=2", "model.lr=1e37"], cli_env, tmp_path))
    study = optuna.load_study(study_name="t", storage=f"sqlite:///{db}")
    assert [t.number for t in study.trials] == [0, 1, 2, 3]
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE", "FAIL", "FAIL"]
    out = second.stdout + second.stderr
    assert out.count("Failed experiment") == 2 and "training diverged at step" in out
    sweep2 = sweep_dirs(logs)[-1]
    best = yaml.safe_load((sweep2 / "optimization_results.yaml").read_text())
    assert best["best_value"] == pytest.approx(max(values))  # the best of the whole study


def test_an_optuna_search_in_which_every_trial_fails_ends_in_one_line(cli_env, tmp_path):
    proc = run_cli(["hparams_search=lstm_optuna", f"hydra.sweeper.storage=sqlite:///{tmp_path / 'o.db'}",
                    "hydra.sweeper.n_trials=2", *TINY, "trainer.max_steps=-5"], cli_env, tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    assert out.count("Failed experiment") == 2 and "`max_steps` must be a non-negative integer" in out
    assert proc.stderr.strip().splitlines()[-1] == ("tagrank: error: no trial of the search completed (each one's "
                                                    "error is above): there is no best one to report")


SEARCHES = sorted(p.stem for p in (Path(CONF_DIR) / "hparams_search").glob("*.yaml"))


def search_space(search: str) -> dict:
    """A search config's ``hydra.sweeper.params``: each setting and its sweep (choice or interval), parsed as
    the Optuna sweeper parses them."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    params = OmegaConf.load(Path(CONF_DIR) / "hparams_search" / f"{search}.yaml").hydra.sweeper.params
    parsed = OverridesParser.create().parse_overrides([f"{k}={v}" for k, v in params.items()])
    return {o.key_or_group: o.value() for o in parsed}


def test_every_search_has_the_same_budget():
    """The methods are compared after tuning (issue 24: the new methods and the scorer on the same budget)."""
    assert {"lstm_optuna", "scorer_optuna", "lstm_attention_optuna", "label_query_optuna"} <= set(SEARCHES)
    trials = {s: OmegaConf.load(Path(CONF_DIR) / "hparams_search" / f"{s}.yaml").hydra.sweeper.n_trials for s in SEARCHES}
    assert len(set(trials.values())) == 1, trials


@pytest.mark.parametrize("search", SEARCHES)
def test_every_value_a_search_can_propose_is_a_setting_its_model_takes(search, tmp_path):
    """Each choice and each end of each interval, composed into the search's model and checked against its
    class: a loss the model does not have (lambdaloss for the attention LSTM) fails here, not in trial 7."""
    from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep

    space = search_space(search)
    assert all(key.startswith("model.") for key in space)
    values = {}
    for key, sweep in space.items():
        values[key] = sweep.list if isinstance(sweep, ChoiceSweep) else [sweep.start, sweep.end]
        assert isinstance(sweep, (ChoiceSweep, IntervalSweep)) and values[key], key
    for i in range(max(map(len, values.values()))):  # every value at least once, all settings in one compose
        chosen = [f"{key}={vals[min(i, len(vals) - 1)]}" for key, vals in values.items()]
        cfg = compose_cfg([f"hparams_search={search}", *chosen], tmp_path, tmp_path)
        check_node(cfg.model, "model")


# The searches' widths, narrowed for a run of seconds (the sweep still proposes every searched setting).
NARROW = {"scorer_optuna": ["model.hidden_size=choice(16,32)"],
          "lstm_attention_optuna": ["model.hidden_size=choice(16,32)", "model.proj_dim=choice(8,16)",
                                    "model.attention_dim=choice(8,16)", "model.grid=2"],
          "label_query_optuna": ["model.d_model=choice(16,32)", "model.grid=2"]}


# 16-22 s each on 2 loaded cores: the label-query search (the newest model, the widest space) in the fast
# suite, the other two with -m slow (the value check above covers all of them in the fast suite).
@pytest.mark.parametrize("search", [pytest.param("scorer_optuna", marks=pytest.mark.slow),
                                    pytest.param("lstm_attention_optuna", marks=pytest.mark.slow),
                                    pytest.param("label_query_optuna")])
def test_a_search_runs_two_real_trials(search, cli_env, tmp_path):
    """The search configs the Optuna sweeper (optuna 2.x) really runs: two trials on the tiny synthetic set,
    each a complete run, every searched setting proposed, the best of them reported."""
    db = tmp_path / "optuna.db"
    ok(run_cli([f"hparams_search={search}", f"hydra.sweeper.storage=sqlite:///{db}", "hydra.sweeper.study_name=t",
                "hydra.sweeper.n_trials=2", *TINY, "model.finetune_after_steps=0", "trainer.max_epochs=1",
                *NARROW[search]], cli_env, tmp_path))
    study = optuna.load_study(study_name="t", storage=f"sqlite:///{db}")
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"]
    assert all(set(t.params) == set(search_space(search)) for t in study.trials)
    (sweep,) = sweep_dirs(Path(cli_env["TAGRANK_LOGS"]))
    for job in ("0", "1"):
        assert (sweep / job / "metrics.json").is_file()
        assert OmegaConf.load(sweep / job / ".hydra/config.yaml").model._target_.endswith(
            {"scorer_optuna": "ListwiseScorer", "lstm_attention_optuna": "LSTMAttention",
             "label_query_optuna": "LabelQueryDecoder"}[search])
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert best["best_value"] == pytest.approx(max(t.value for t in study.trials))


# -- submitit (the SLURM launch path, on this machine) ----------------------------------------------


def test_submitit_local_grid_sweep_one_run_and_one_wandb_run_per_job(cli_env, tmp_path):
    ok(run_cli(["-m", "launcher=local", "model=lstm", "seed=1,2", "logger=wandb", *SMALL, "trainer.max_epochs=1"],
               cli_env, tmp_path))
    (sweep,) = sweep_dirs(Path(cli_env["TAGRANK_LOGS"]))
    assert any((sweep / ".submitit").iterdir())  # the jobs went through submitit
    runs = {}
    for job, seed in (("0", 1), ("1", 2)):
        run = sweep / job
        assert OmegaConf.load(run / ".hydra/config.yaml").seed == seed
        assert metrics_of(run)["n_images"] == 48
        (wb,) = offline_runs(run / "wandb")
        runs[job] = wb
        assert wb.run_id == (run / "wandb_id").read_text().strip()
        assert wb.config["seed"] == seed
    assert runs["0"].run_id != runs["1"].run_id
    assert runs["0"].group == runs["1"].group == f"train-{sweep.name}"  # grouped by sweep


def test_slurm_launcher_config_makes_a_real_sbatch_script(tmp_path, monkeypatch):
    """launcher=slurm composes (submitit_slurm, one GPU per trial, trainer=gpu) and submitit turns its
    values into the sbatch flags we rely on (SIGUSR1 before the limit, requeue). ``srun`` is only looked
    up on PATH by submitit's executor; the script is generated, not submitted."""
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("train", overrides=["launcher=slurm", "hydra.launcher.partition=gpu",
                                          "hydra.launcher.setup=[module load cuda]"], return_hydra_config=True)
    assert cfg.hydra.launcher._target_.endswith("SlurmLauncher")
    assert cfg.trainer.accelerator == "gpu" and cfg.trainer.precision == "bf16-mixed" and cfg.data.pin_memory
    from hydra.core.hydra_config import HydraConfig
    from hydra.utils import instantiate
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
    import submitit

    HydraConfig.instance().set_config(cfg)
    launcher = instantiate(cfg.hydra.launcher)
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin/srun").write_text("#!/bin/sh\nexit 1\n")
    (tmp_path / "bin/srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    executor = submitit.AutoExecutor(folder=tmp_path / "sub", cluster="slurm")
    base = set(OmegaConf.structured(BaseQueueConf).keys())
    params = {k if k in base else f"slurm_{k}": v for k, v in launcher.params.items()
              if k not in ("submitit_folder", "max_num_timeout")}
    executor.update_parameters(**params)
    script = executor._executor._make_submission_file_text("python -m submitit.core._submit x", "uid")
    for flag in ("--signal=USR1@120", "--requeue", "--gpus-per-node=1", "--ntasks-per-node=1", "--cpus-per-task=8",
                 "--mem=32GB", "--time=240", "--partition=gpu"):
        assert f"#SBATCH {flag}" in script, flag
    assert "module load cuda" in script

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        local = compose("train", overrides=["launcher=local"], return_hydra_config=True)
        ddp = compose("train", overrides=["trainer=ddp"], return_hydra_config=True)
    assert local.hydra.launcher._target_.endswith("LocalLauncher") and local.trainer.accelerator == "cpu"
    assert ddp.trainer.strategy == "ddp_find_unused_parameters_true" and ddp.trainer.devices == "auto" and ddp.trainer.accelerator == "gpu"


@pytest.mark.skipif(shutil.which("srun") is not None, reason="this machine has SLURM: launcher=slurm would submit")
@pytest.mark.parametrize("arguments, message", [
    (["launcher=slurm"], "launcher=slurm runs the jobs of a multirun: add -m (tagrank-train -m launcher=slurm "),
    (["launcher=local"], "launcher=local runs the jobs of a multirun: add -m (tagrank-train -m launcher=local "),
    (["-m", "launcher=slurm", "seed=1,2"], "launcher=slurm submits the jobs to SLURM, and this machine has no srun: "),
])
def test_a_launcher_without_its_multirun_or_its_cluster_is_one_line(arguments, message, tmp_path, cli_env):
    proc = subprocess.run(["tagrank-train", *arguments, *TINY], capture_output=True, text=True, env=cli_env,
                          cwd=tmp_path, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1].startswith(f"tagrank: error: {message}")


# -- W&B ----------------------------------------------------------------------------------------------


def test_wandb_offline_run_has_config_metrics_curves_and_predictions_and_resumes(tmp_path, cache_dir, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DATA_DIR", str(tmp_path / "unused"))  # restored after the test
    run = tmp_path / "run"
    train(compose_cfg([*SMALL, "logger=[csv,wandb]", "logger.wandb.project=tagrank-test"], run, cache_dir))

    (wb,) = offline_runs(run / "wandb")
    assert wb.run_id == (run / "wandb_id").read_text().strip()
    assert wb.config["model.hidden_size"] == 32 and wb.config["data.n_train"] == 96  # the composed config
    keys = wb.keys()
    assert {"train/loss", "val/loss", "test/loss", "lr-Adam"} <= keys
    for stage in ("val", "test"):
        assert {f"{stage}/{m}@{k}" for m in ("ndcg", "p") for k in range(1, 11)} <= keys
        assert f"{stage}/curves_table/path" in keys  # the NDCG@k / P@k plot (wandb.plot.line_series)
    tables = wb.values("val/predictions/path")
    assert len(tables) == 2  # one per epoch
    table = json.loads((next((run / "wandb").glob("offline-run-*")) / "files" / tables[-1]).read_text())
    assert table["columns"] == ["image", "truth", "predicted"] and len(table["data"]) == 16
    assert all(len(row[2].split(", ")) == 10 and row[1] for row in table["data"])
    images = [local for path, local in wb.artifact_files if path.startswith("media/images/")]
    assert len(images) >= 16 and all(Path(p).is_file() and str(run) in p for p in images)  # staged in the run
    last_step = max(wb.values("trainer/global_step"))

    # Resuming the run (ckpt_path) continues the same W&B run.
    train(compose_cfg([*SMALL, "logger=[csv,wandb]", "logger.wandb.project=tagrank-test", "trainer.max_epochs=3",
                       f"ckpt_path={run / 'checkpoints/last.ckpt'}"], run, cache_dir))
    first, second = offline_runs(run / "wandb")
    assert first.run_id == second.run_id == wb.run_id
    assert min(second.values("trainer/global_step")) >= last_step and "val/predictions/path" in second.keys()
    # The CSV log of the first session is kept beside the resumed one's.
    assert "epoch" in (run / "csv/metrics-1.csv").read_text() and (run / "csv/metrics.csv").is_file()


def test_wandb_online_without_credentials_fails_fast(tmp_path, cache_dir, monkeypatch):
    for var in ("WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("WANDB_MODE", "online")
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    cfg = compose_cfg([*SMALL, "logger=wandb"], tmp_path / "run", cache_dir)
    start = time.monotonic()
    with pytest.raises(TagrankError, match="WANDB_MODE=online needs W&B credentials"):
        train(cfg)
    assert time.monotonic() - start < 5 and not (tmp_path / "run" / "wandb").exists()


# -- divergence -----------------------------------------------------------------------------------------


def test_diverged_run_stops_with_a_clear_message_and_keeps_the_last_good_checkpoint(cli_env, tmp_path):
    # One good epoch (6 steps, checkpointed), then the backbone joins at lr 1e30 at step 7 and the
    # loss is NaN at step 8.
    run = tmp_path / "run"
    proc = run_cli([*SMALL, "trainer.max_epochs=3", "model.finetune_after_steps=7", "model.finetune_lr=1e30",
                    f"hydra.run.dir={run}"], cli_env, tmp_path)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "tagrank: error: training diverged at step 8 (epoch 1): the training loss is nan" in proc.stderr
    assert f"the last good checkpoint is kept: {run / 'checkpoints/last.ckpt'}" in proc.stderr
    assert "Traceback" not in proc.stderr
    # The validation loss is NaN too, and says so by being NaN (not torchmetrics' "Encountered `nan` values
    # in tensor. Will be removed." warning before our message, and the mean of the rest).
    assert "Encountered `nan` values" not in proc.stderr
    ckpt = torch.load(run / "checkpoints/last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 6 and ckpt["epoch"] == 0
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point())
    assert not (run / "metrics.json").exists()


def test_the_evaluation_loss_is_the_mean_over_images_whatever_the_batches():
    """Batches of 3 and 1 images: the loss logged is the mean of the four images' losses (what DDP's sum states
    reduce exactly), not the mean of the two batch means (what torchmetrics' MeanMetric(nan_strategy="disable")
    gave when handed weight=: it drops weights; the DDP tests found it)."""
    from tagrank.models.lstm import LSTMTagger

    torch.manual_seed(0)
    model = LSTMTagger(6, top_k=3).eval()
    features = torch.randn(4, model.feature_dim)
    target = torch.tensor([[0, 1, -1], [2, -1, -1], [3, 4, 5], [1, -1, -1]])
    with torch.no_grad():
        each = [float(model.loss({"features": features[i:i + 1], "target": target[i:i + 1]})) for i in range(4)]
        for rows in (slice(0, 3), slice(3, 4)):
            model._evaluate({"features": features[rows], "target": target[rows]}, "val", model.val_metrics)
    assert float(model.val_loss.compute()) == pytest.approx(sum(each) / 4, rel=1e-6)
    assert abs(sum(each) / 4 - (sum(each[:3]) / 3 + each[3]) / 2) > 1e-3  # the two means differ here


def test_ddp_in_a_local_multirun_is_refused_with_a_clear_message(cli_env, tmp_path):
    """tagrank-train's entry in this process: the refusal comes before any training."""
    proc = run_command(train_main, ["-m", *SMALL, "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2",
                                    "trainer.precision=32-true", "seed=1"], own_wandb(cli_env), tmp_path)
    assert proc.returncode != 0
    assert "trainer=ddp starts its extra processes by re-running the command" in proc.stdout + proc.stderr


# -- slow: DDP, kill and resume, SLURM preemption -------------------------------------------------------


@pytest.mark.slow
def test_ddp_on_two_cpu_processes_gives_exactly_the_metrics_of_one(cli_env, tmp_path):
    # 47 test and 31 validation images: odd, so a padding sampler would score one image twice.
    # Per-process batch 8 x 2 processes = batch 16 of the 1-process run: the same images per step.
    data = [*SMALL, "data.n_val=31", "data.n_test=47", "model.dropout=0"]
    one = tmp_path / "one"
    ok(run_cli([*data, f"hydra.run.dir={one}"], cli_env, tmp_path))
    logs = Path(cli_env["TAGRANK_LOGS"])
    ok(run_cli([*data, "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.precision=32-true",
                "data.num_workers=0", "data.pin_memory=false", "data.batch_size=8", "logger=[csv,wandb]"],
               cli_env, tmp_path))
    (ddp,) = [p for p in (logs / "train" / "runs").iterdir()]  # one run directory for both processes
    assert (ddp / "train_ddp_process_1.log").is_file()
    ddp_metrics, one_metrics = metrics_of(ddp), metrics_of(one)
    # The loss is a float32 mean of per-batch means (24 + 23 images vs 47): equal up to rounding.
    assert ddp_metrics.pop("loss") == pytest.approx(one_metrics.pop("loss"), rel=1e-6)
    assert ddp_metrics == one_metrics  # every ranking metric exactly
    assert ddp_metrics["n_images"] == 47
    assert (ddp / "predictions.jsonl").read_text() == (one / "predictions.jsonl").read_text()
    assert len(offline_runs(ddp / "wandb")) == 1  # logged from rank 0 only


@pytest.mark.slow
def test_ddp_fine_tuning_keeps_one_backbone_on_every_process(cli_env, tmp_path):
    """After the switch, the backbone's gradients are synchronised: both processes end with the same
    fine-tuned weights (unsynchronised, each would train its own copy on its own shard)."""
    from .conftest import ROOT

    env = {**cli_env, "PYTHONPATH": str(ROOT)}
    run = tmp_path / "ddp"
    ok(run_cli([*SMALL, "model.finetune_after_steps=3", "model.finetune_lr=0.001", "trainer.max_steps=8",
                "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.precision=32-true",
                "data.num_workers=0", "data.pin_memory=false", "data.batch_size=8", f"hydra.run.dir={run}",
                "+callbacks.digest._target_=tests.probes.BackboneDigest"], env, tmp_path))
    digests = {(run / f"backbone_rank{r}.txt").read_text() for r in (0, 1)}
    assert len(digests) == 1
    from tagrank.models.backbones import build_backbone
    from tagrank.pipeline import state_digest

    assert digests != {state_digest(build_backbone("efficientnet_lite0"))}  # it was fine-tuned
    ckpt = torch.load(run / "checkpoints/last.ckpt", map_location="cpu", weights_only=True)
    assert len(ckpt["optimizer_states"][0]["param_groups"]) == 2 and bool(ckpt["state_dict"]["backbone_finetuned"])


# A run long enough to be killed mid-epoch: 12 steps per epoch, last.ckpt every 4 steps, dropout on
# (so the random state must be restored too), W&B on (the resumed run must continue it).
KILLABLE = [*SMALL, "data.n_train=192", "trainer.max_epochs=3", "callbacks.step_checkpoint.every_n_train_steps=4",
            "logger=[csv,wandb]"]
STEPS_PER_EPOCH = 12


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, cache_dir):
    tmp = tmp_path_factory.mktemp("uninterrupted")
    env = _env(tmp, cache_dir)
    ok(run_cli([*KILLABLE, f"hydra.run.dir={tmp / 'run'}"], env, tmp))
    return tmp / "run"


def _env(tmp: Path, cache_dir: Path) -> dict:
    env = own_wandb(dict(os.environ))
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(TAGRANK_CACHE=str(cache_dir), TAGRANK_LOGS=str(tmp / "logs"), WANDB_MODE="offline", PYTHONUNBUFFERED="1")
    return env


def assert_same_wandb_run(run: Path, sessions: int = 2) -> None:
    """Offline W&B sessions (killed, resumed; two unless said) of the one W&B run whose id is in <run>/wandb_id.

    A process killed with SIGKILL cannot flush what wandb buffered, so its session's file may hold
    little more than its header; its directory still names the run id, and `wandb sync` merges both."""
    run_id = (run / "wandb_id").read_text().strip()
    found = sorted((run / "wandb").glob("offline-run-*"))
    assert len(found) == sessions and all(d.name.endswith(f"-{run_id}") for d in found)
    resumed = read_offline_run(found[-1])
    assert resumed.run_id == run_id and "test/ndcg_mean" in resumed.keys()


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 300) -> None:
    end = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, f"the run ended before {path} appeared"
        assert time.monotonic() < end, f"{path} did not appear"
        time.sleep(0.01)


@pytest.mark.slow
def test_run_killed_mid_epoch_resumes_to_the_same_result(uninterrupted, tmp_path, cache_dir):
    env = _env(tmp_path, cache_dir)
    run = tmp_path / "run"
    proc = subprocess.Popen(["tagrank-train", *KILLABLE, f"hydra.run.dir={run}"], env=env, cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = run / "checkpoints" / "last.ckpt"
    _wait_for(last, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    ckpt = torch.load(last, map_location="cpu", weights_only=True)  # never a half-written file
    assert ckpt["global_step"] % STEPS_PER_EPOCH != 0, "killed at an epoch boundary: the test needs mid-epoch"

    ok(run_cli([*KILLABLE, f"ckpt_path={last}"], env, tmp_path))  # a new command, as a user would type it
    assert metrics_of(run) == metrics_of(uninterrupted)
    assert (run / "predictions.jsonl").read_text() == (uninterrupted / "predictions.jsonl").read_text()
    assert_same_wandb_run(run)


@pytest.mark.slow
def test_slurm_preemption_saves_requeues_and_the_restarted_job_resumes(uninterrupted, tmp_path, cache_dir):
    """What SLURM does before a time limit, on this machine: the job gets SIGUSR1 (launcher=slurm asks
    for it), Lightning saves <run>/hpc_ckpt_1.ckpt and calls ``scontrol requeue <job>`` (here a stand-in
    that records the call), SLURM kills the job and starts it again: same command, same directory."""
    env = _env(tmp_path, cache_dir)
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin/scontrol").write_text(f'#!/bin/sh\necho "$@" >> {tmp_path / "scontrol.calls"}\n')
    (tmp_path / "bin/scontrol").chmod(0o755)
    env["PATH"] = f"{tmp_path / 'bin'}{os.pathsep}{env['PATH']}"
    env.update(SLURM_JOB_ID="4242", SLURM_JOB_NAME="tagrank", SLURM_NTASKS="1", SLURM_NTASKS_PER_NODE="1",
               SLURM_NODEID="0", SLURM_PROCID="0", SLURM_LOCALID="0")
    run = tmp_path / "run"
    command = ["tagrank-train", *KILLABLE, f"hydra.run.dir={run}"]
    proc = subprocess.Popen(command, env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_for(run / "checkpoints" / "last.ckpt", proc)
    proc.send_signal(signal.SIGUSR1)
    _wait_for(tmp_path / "scontrol.calls", proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (tmp_path / "scontrol.calls").read_text().split() == ["requeue", "4242"]
    assert torch.load(run / "hpc_ckpt_1.ckpt", map_location="cpu", weights_only=True)["global_step"] > 0

    restarted = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    ok(restarted)
    assert "hpc_ckpt_1.ckpt" in restarted.stdout + restarted.stderr  # resumed from the preemption checkpoint
    assert metrics_of(run) == metrics_of(uninterrupted)
    assert_same_wandb_run(run)
