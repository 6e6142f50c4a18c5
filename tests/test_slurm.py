"""launcher=slurm on a real SLURM cluster: sweeps, preemption, Optuna, DDP under srun, Table 1.

They run where ``sinfo`` answers: a cluster's login node, or this machine after ``make slurm`` (a one-node
cluster whose config is ``.slurm/slurm.conf``, used when SLURM_CONF is unset). Elsewhere they skip, saying
why. Every job asks for one CPU (two tasks for DDP), so two of them run at once on a two-core machine.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from .conftest import ROOT
from .test_scaling import KILLABLE, SMALL, assert_same_wandb_run, metrics_of, ok, own_wandb, sweep_dirs

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
