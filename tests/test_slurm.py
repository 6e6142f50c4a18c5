"""launcher=slurm on a real SLURM cluster: sweeps, preemption, Optuna, DDP under srun, Table 1.

They run where ``sinfo`` answers: a cluster's login node, or this machine after ``make slurm`` (a one-node
cluster whose config is ``.slurm/slurm.conf``, used when SLURM_CONF is unset). Elsewhere they skip, saying
why. Every job asks for one CPU (two tasks for DDP), so two of them run at once on a two-core machine.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from .conftest import ROOT, TINY
from .test_scaling import KILLABLE, SMALL, assert_same_wandb_run, metrics_of, ok, own_wandb, sweep_dirs, uninterrupted  # noqa: F401

# launcher=slurm as a user of this one-node cluster sets it: the CPU trainer, one CPU per job, no GPU or memory asked.
ON_THIS_NODE = ["launcher=slurm", "trainer=cpu", "hydra.launcher.gpus_per_node=null", "hydra.launcher.cpus_per_task=1",
                "hydra.launcher.mem_gb=null", "hydra.launcher.timeout_min=30"]


def _slurm_conf() -> dict[str, str]:
    """SLURM_CONF for the clients: the caller's, else the one ``make slurm`` wrote."""
    if "SLURM_CONF" in os.environ:
        return {}
    conf = ROOT / ".slurm" / "slurm.conf"
    return {"SLURM_CONF": str(conf)} if conf.is_file() else {}


def _why_no_slurm() -> str | None:
    try:
        proc = subprocess.run(["sinfo", "-h", "-N", "-o", "%t"], capture_output=True, text=True, timeout=20,
                              env={**os.environ, **_slurm_conf()})
    except FileNotFoundError:
        return "no sinfo on PATH: SLURM is not installed (make slurm brings up a one-node cluster here)"
    except subprocess.TimeoutExpired:
        return "sinfo did not answer within 20 s (is slurmctld running? make slurm)"
    states = proc.stdout.split()
    if proc.returncode != 0 or not states:
        return f"sinfo found no cluster ({(proc.stderr.strip().splitlines() or ['no node'])[-1]}); make slurm starts one"
    if not {"idle", "mix", "alloc"} & set(states):
        return f"no SLURM node takes jobs (sinfo: {' '.join(states)})"
    return None


_WHY = _why_no_slurm()
pytestmark = pytest.mark.skipif(_WHY is not None, reason=_WHY or "")


@pytest.fixture
def slurm_env(cli_env) -> dict[str, str]:
    return own_wandb({**cli_env, **_slurm_conf()})


def train_cli(args: list[str], env: dict, cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(["tagrank-train", *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=timeout)


def slurm(*args: str, env: dict) -> str:
    return subprocess.run(list(args), capture_output=True, text=True, env=env, check=True, timeout=30).stdout


def wait_for(what, proc: subprocess.Popen, timeout: float = 300, message: str = "") -> None:
    end = time.monotonic() + timeout
    while not what():
        assert proc.poll() is None, f"the sweep ended before {message}"
        assert time.monotonic() < end, f"timed out waiting for {message}"
        time.sleep(0.05)


def test_a_sweep_runs_as_slurm_jobs_with_the_metrics_of_local_jobs(slurm_env, tmp_path):
    sweep = ["seed=0,1", *SMALL]
    logs = Path(slurm_env["TAGRANK_LOGS"])
    ok(train_cli(["-m", *ON_THIS_NODE, *sweep], slurm_env, tmp_path))
    (on_slurm,) = sweep_dirs(logs)
    scripts = list((on_slurm / ".submitit").glob("*/*_submission.sh"))
    assert len(scripts) == 1 and "#SBATCH --array=0-1" in scripts[0].read_text()  # one array job of two tasks
    job_id = scripts[0].parent.name
    for task in ("0", "1"):  # each ran inside SLURM: its log names its array job and task
        out = (on_slurm / ".submitit" / f"{job_id}_{task}" / f"{job_id}_{task}_0_log.err").read_text()
        assert "Job completed successfully" in out

    ok(train_cli(["-m", "launcher=local", *sweep], slurm_env, tmp_path))
    on_local = sweep_dirs(logs)[-1]
    for task, seed in (("0", 0), ("1", 1)):
        assert OmegaConf.load(on_slurm / task / ".hydra/config.yaml").seed == seed
        assert metrics_of(on_slurm / task) == metrics_of(on_local / task)
    assert metrics_of(on_slurm / "0") != metrics_of(on_slurm / "1")


def submitit_jobs(sweep: Path) -> list[str]:
    """The SLURM job ids of a sweep: its folders under .submitit (a job array's tasks have their own, <id>_<task>)."""
    return [p.name for p in (sweep / ".submitit").iterdir() if p.name.isdigit()]


def job_state(job: str, env: dict) -> tuple[str, int]:
    """A job's state (RUNNING, PENDING, ...) and how many times SLURM has started it again."""
    out = slurm("scontrol", "show", "job", job, env=env)
    return re.search(r"JobState=(\S+)", out).group(1), int(re.search(r"Restarts=(\d+)", out).group(1))


def start_again(job: str, restarts: int, proc: subprocess.Popen, env: dict) -> float:
    """Wait until SLURM has requeued ``job`` for the ``restarts``-th time, let it start now (a requeued job
    waits two minutes before it may start again), and return when it runs again (time.time())."""
    wait_for(lambda: job_state(job, env) == ("PENDING", restarts), proc, message=f"requeue {restarts} of job {job}")
    slurm("scontrol", "update", f"jobid={job}", "StartTime=now", env=env)
    wait_for(lambda: job_state(job, env)[0] == "RUNNING", proc, message=f"job {job} to run again")
    return time.time()


# KILLABLE (36 steps, last.ckpt every 4, dropout, W&B) slowed down to ~0.4 s a step, so that the test can signal
# and requeue the job mid-training; the delay changes no result.
PREEMPTIBLE = [*KILLABLE, "+callbacks.delay._target_=tests.probes.StepDelay", "+callbacks.delay.seconds=0.4"]


def test_a_requeued_job_goes_on_from_its_checkpoint_to_the_metrics_of_an_uninterrupted_run(slurm_env, tmp_path,
                                                                                           uninterrupted):
    """The two ways SLURM stops a running job, one after the other on the same job: the warning before the time
    limit (SIGUSR1, launcher=slurm's --signal), on which tagrank saves hpc_ckpt_1.ckpt and requeues the job; then
    ``scontrol requeue`` (preemption: SIGTERM, then SIGKILL), after which it resumes from checkpoints/last.ckpt.
    Each time SLURM starts the job again in the same run folder, and the sweep waits for it."""
    env = {**slurm_env, "PYTHONPATH": str(ROOT)}  # tests.probes, in the job too (sbatch passes the environment on)
    sweep = tmp_path / "sweep"
    run, last = sweep / "0", sweep / "0" / "checkpoints" / "last.ckpt"
    with open(tmp_path / "sweep.log", "w") as out:
        proc = subprocess.Popen(["tagrank-train", "-m", *ON_THIS_NODE, *PREEMPTIBLE, f"hydra.sweep.dir={sweep}"],
                                env=env, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT)
    wait_for(last.exists, proc, message="the job's first checkpoint")
    (job,) = submitit_jobs(sweep)  # a one-job sweep: a plain job, no array
    try:
        script = (sweep / ".submitit" / job / f"{job}_submission.sh").read_text()
        assert "#SBATCH --signal=USR1@120" in script and "#SBATCH --requeue" in script

        slurm("scancel", "--signal=USR1", job, env=env)  # what --signal=USR1@120 sends 120 s before the limit
        restarted = start_again(job, 1, proc, env)
        hpc = run / "hpc_ckpt_1.ckpt"
        assert torch.load(hpc, map_location="cpu", weights_only=True)["global_step"] > 0

        wait_for(lambda: last.stat().st_mtime > restarted, proc, message="a checkpoint of the restarted job")
        slurm("scontrol", "requeue", job, env=env)  # preempted
        start_again(job, 2, proc, env)
        assert proc.wait(timeout=600) == 0, (tmp_path / "sweep.log").read_text()[-5000:]
    finally:
        if proc.poll() is None:  # a failed check: leave no job behind on the cluster
            proc.kill()
            subprocess.run(["scancel", job], env=env, check=False)

    log = (sweep / ".submitit" / job / f"{job}_0_log.err").read_text()  # the three starts append to one log
    assert "saved " + str(hpc) in log and "requeued SLURM job " + job in log
    # The second start resumes from hpc_ckpt_1.ckpt (Lightning restores it), or from last.ckpt where the job trained
    # on to its next one before SLURM stopped it (a busy machine); the third from last.ckpt.
    resumed = re.findall(r"SLURM job restarted: resuming from (\S+)", log)
    assert len(resumed) == 2 and resumed[0] in (str(hpc), str(last)) and resumed[1] == str(last), resumed
    assert metrics_of(run) == metrics_of(uninterrupted)
    assert (run / "predictions.jsonl").read_text() == (uninterrupted / "predictions.jsonl").read_text()
    assert_same_wandb_run(run, sessions=3)


# SLURM's own warning before the time limit: --time=2 (minutes) and --signal=USR1@60, so the signal is due a minute
# after the job starts; slurmctld checks time limits every 30 s, so it comes 30-60 s in. Until then the job trains
# KILLABLE at 2 s a step (72 s of steps in all: it is still training when the signal comes); once SLURM starts it
# again it runs at full speed, well within its new limit.
TIME_LIMITED = [*[a for a in ON_THIS_NODE if not a.startswith("hydra.launcher.timeout_min=")], *KILLABLE,
                "hydra.launcher.timeout_min=2", "hydra.launcher.signal_delay_s=60",
                "+callbacks.delay._target_=tests.probes.StepDelay", "+callbacks.delay.seconds=2",
                "+callbacks.delay.until_requeued=true"]


# ~1.5 min, mostly waiting for SLURM's clock (its time limit is in minutes); the fast suite has room for it
def test_the_time_limit_warning_saves_and_requeues_and_the_job_ends_with_the_metrics_of_an_uninterrupted_run(
        slurm_env, tmp_path, uninterrupted):
    """No signal sent by hand: SLURM's time limit sends SIGUSR1 (--signal=USR1@60 of a --time=2 job); tagrank
    saves hpc_ckpt_1.ckpt and requeues the job, which starts again in the same run folder, resumes from that
    checkpoint and ends with the metrics, predictions and W&B run of an uninterrupted run."""
    env = {**slurm_env, "PYTHONPATH": str(ROOT)}
    sweep = tmp_path / "sweep"
    run, hpc, last = sweep / "0", sweep / "0" / "hpc_ckpt_1.ckpt", sweep / "0" / "checkpoints" / "last.ckpt"
    with open(tmp_path / "sweep.log", "w") as out:
        proc = subprocess.Popen(["tagrank-train", "-m", *TIME_LIMITED, f"hydra.sweep.dir={sweep}"],
                                env=env, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT)
    wait_for(lambda: (sweep / ".submitit").is_dir() and submitit_jobs(sweep), proc, message="the job's submission")
    (job,) = submitit_jobs(sweep)
    try:
        script = (sweep / ".submitit" / job / f"{job}_submission.sh").read_text()
        assert "#SBATCH --time=2\n" in script and "#SBATCH --signal=USR1@60" in script
        start_again(job, 1, proc, env)  # requeued by the job itself; started now instead of in two minutes
        while proc.poll() is None:  # (a slow machine may reach the new limit's warning too: it goes on again)
            if job_state(job, env)[0] == "PENDING":
                slurm("scontrol", "update", f"jobid={job}", "StartTime=now", env=env)
            time.sleep(1)
        assert proc.wait() == 0, (tmp_path / "sweep.log").read_text()[-5000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            subprocess.run(["scancel", job], env=env, check=False)

    starts = 1 + job_state(job, env)[1]
    log = (sweep / ".submitit" / job / f"{job}_0_log.err").read_text()
    assert re.search(rf"SLURM time limit near: saved {re.escape(str(hpc))} at step \d+", log), log[-3000:]
    assert "requeued SLURM job " + job in log, log[-3000:]
    # from hpc_ckpt_1.ckpt, or from last.ckpt where the job trained on to its next one before SLURM stopped it
    assert re.search(rf"SLURM job restarted: resuming from ({re.escape(str(hpc))}|{re.escape(str(last))})", log), \
        log[-3000:]
    assert metrics_of(run) == metrics_of(uninterrupted)
    assert (run / "predictions.jsonl").read_text() == (uninterrupted / "predictions.jsonl").read_text()
    assert_same_wandb_run(run, sessions=starts)


def best_score(run: Path) -> float:
    """val/ndcg_mean of a run's best.ckpt: what its Optuna trial reports."""
    ckpt = torch.load(run / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)
    (state,) = [v for k, v in ckpt["callbacks"].items() if k.startswith("ModelCheckpoint") and "val/ndcg_mean" in k]
    return float(state["best_model_score"])


def test_an_optuna_study_runs_two_trials_at_once_and_keeps_a_requeued_one(slurm_env, tmp_path):
    """hparams_search with launcher=slurm: one job array of n_jobs=2 trials running together; one is preempted
    (``scontrol requeue``) and resumes; the study in its sqlite storage holds both trials, complete, with the
    scores their runs reached."""
    import optuna

    env = {**slurm_env, "PYTHONPATH": str(ROOT)}
    sweep, db = tmp_path / "sweep", tmp_path / "optuna.db"
    search = ["hparams_search=lstm_optuna", *ON_THIS_NODE, *SMALL, "data.n_train=192", "trainer.max_epochs=3",
              "callbacks.step_checkpoint.every_n_train_steps=4", "+callbacks.delay._target_=tests.probes.StepDelay",
              "+callbacks.delay.seconds=0.3", "hydra.sweeper.n_trials=2", "hydra.sweeper.n_jobs=2",
              f"hydra.sweeper.storage=sqlite:///{db}", "hydra.sweeper.study_name=on_slurm", f"hydra.sweep.dir={sweep}"]
    with open(tmp_path / "search.log", "w") as out:
        proc = subprocess.Popen(["tagrank-train", *search], env=env, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT)
    last = sweep / "1" / "checkpoints" / "last.ckpt"
    wait_for(last.exists, proc, message="the second trial's first checkpoint")
    (array,) = submitit_jobs(sweep)
    job = f"{array}_1"
    try:
        assert job_state(f"{array}_0", env)[0] == "RUNNING"  # the two trials at once
        slurm("scontrol", "requeue", job, env=env)
        start_again(job, 1, proc, env)
        assert proc.wait(timeout=600) == 0, (tmp_path / "search.log").read_text()[-5000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            subprocess.run(["scancel", array], env=env, check=False)

    assert "#SBATCH --array=0-1%" in (sweep / ".submitit" / array / f"{array}_submission.sh").read_text()
    assert "SLURM job restarted: resuming from" in (sweep / ".submitit" / job / f"{job}_0_log.err").read_text()
    study = optuna.load_study(study_name="on_slurm", storage=f"sqlite:///{db}")
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 2
    assert [t.value for t in study.trials] == [best_score(sweep / "0"), best_score(sweep / "1")]


def test_ddp_as_two_slurm_tasks_gives_the_metrics_of_one_process(slurm_env, tmp_path):
    """trainer=ddp with hydra.launcher.tasks_per_node=2: SLURM starts both processes (srun, two tasks of one job;
    Lightning's SLURM environment gives their ranks), gloo on the CPU, per-process batch 8 against one process
    at batch 16 (the existing equality test in tests/test_scaling.py, launched the cluster's way)."""
    data = [*SMALL, "data.n_val=31", "data.n_test=47", "model.dropout=0"]
    one = tmp_path / "one"
    ok(train_cli([*data, f"hydra.run.dir={one}"], slurm_env, tmp_path))
    sweep = tmp_path / "sweep"
    on_node = [a for a in ON_THIS_NODE if not a.startswith("trainer=")]
    ok(train_cli(["-m", *on_node, "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2",
                  "trainer.precision=32-true", "hydra.launcher.tasks_per_node=2", "data.num_workers=0",
                  "data.pin_memory=false", "data.batch_size=8", *data, f"hydra.sweep.dir={sweep}"], slurm_env, tmp_path))
    (job,) = submitit_jobs(sweep)
    assert "#SBATCH --ntasks-per-node=2" in (sweep / ".submitit" / job / f"{job}_submission.sh").read_text()
    for rank in (0, 1):  # each SLURM task is one DDP process, its rank the task's
        out = (sweep / ".submitit" / job / f"{job}_{rank}_log.err").read_text()
        assert f"GLOBAL_RANK: {rank}, MEMBER: {rank + 1}/2" in out
    ddp = sweep / "0"
    assert not list(ddp.glob("*ddp_process*"))  # not Lightning's local re-launch
    ddp_metrics, one_metrics = metrics_of(ddp), metrics_of(one)
    assert ddp_metrics.pop("loss") == pytest.approx(one_metrics.pop("loss"), rel=1e-6)
    assert ddp_metrics == one_metrics and ddp_metrics["n_images"] == 47
    assert (ddp / "predictions.jsonl").read_text() == (one / "predictions.jsonl").read_text()


def test_table1_runs_as_slurm_jobs_and_aggregates_them(slurm_env, tmp_path):
    """experiments/table1.py with launcher=slurm: the frozen methods' multirun, then the fine-tuning one, each as
    SLURM jobs (jobs=1: one of the fine-tuning array at a time); the table is aggregated from their run folders."""
    import csv
    import sys

    proc = subprocess.run([sys.executable, str(ROOT / "experiments/table1.py"), "quick=true", "seeds=2",
                           "methods=[lstm,svm,frequency]", "jobs=1", f"results={tmp_path / 'results'}", f"sweep_dir={tmp_path / 'sweep'}",
                           *ON_THIS_NODE, *TINY],
                          capture_output=True, text=True, env=slurm_env, timeout=900, cwd=tmp_path)
    assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-3000:])
    for group in ("frozen", "finetuned-1"):
        logs = list((tmp_path / "sweep" / group / ".submitit").glob("*/*_log.err"))
        assert logs and all("Job completed successfully" in p.read_text() for p in logs), group
    scripts = list((tmp_path / "sweep/finetuned-1/.submitit").rglob("*_submission.sh"))
    assert scripts and all("#SBATCH --array=0-1%1" in p.read_text() for p in scripts)  # jobs=1: one at a time
    table = {r["method"]: r for r in csv.DictReader((tmp_path / "results/synthetic/table1.csv").open())}
    assert set(table) == {"lstm", "svm", "frequency"}
    assert table["lstm"]["seeds"] == "2"
