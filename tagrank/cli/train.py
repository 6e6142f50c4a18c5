"""Train a ranked-tag method, test its best checkpoint, and report the paper's metrics.

    tagrank-train                                   # the paper's LSTM on the embedded synthetic data
    tagrank-train model.hidden_size=512 trainer.max_steps=200
    tagrank-train ckpt_path=<run>/checkpoints/last.ckpt     # resume that run, in its directory
    tagrank-train trainer=gpu | trainer=ddp | logger=wandb
    tagrank-train -m seed=1,2,3 | hparams_search=lstm_optuna [launcher=slurm]   # sweeps

Reads top to bottom: compose config -> check every setting that needs no data -> data (built once,
cached) -> model with pretrained backbone -> run summary -> features (cached) -> fit -> test best
checkpoint -> table + metrics.json + README.md (the run's model card). Returns the metric a sweeper
optimises (``optimized_metric``, default ``val/ndcg_mean``).
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import signal
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict

from tagrank import CONF_DIR
from tagrank.cli import command
from tagrank.config import USER_ERRORS, Seed, check_node, check_value, in_multirun, instantiate
from tagrank.errors import TagrankError
from tagrank.quiet import quiet_resumed

if TYPE_CHECKING:
    import lightning as L

# torch, Lightning and what builds on them (seconds to import) are imported inside the functions that use
# them: a mistake on the command line, --help or a launcher=slurm sweep's submission is answered without them.

log = logging.getLogger("tagrank")


def train(cfg: DictConfig, command_log: Path | None = None) -> float | None:
    """``command_log``: the file Hydra logs this command to (``tagrank-train`` gives it); a resumed run's
    own train.log gets a copy of it at the end."""
    # Every setting that can be checked without data is checked first: a mistake costs seconds, not a
    # dataset build. Nothing is written into a run directory being resumed before these pass.
    check_value("seed", cfg.seed, Seed)
    check_value("test", cfg.get("test"), bool)
    import lightning as L
    import torch

    from tagrank.dashboard import check_wandb, log_config
    from tagrank.models.backbones import resolve_weights
    from tagrank.models.staged import finetunes
    from tagrank.pipeline import attach_inputs, build_model, build_trainer, check_backbone, keep_previous_csv, \
        planned_steps, report
    from tagrank.report.card import describe, log_summary, write_card

    check_wandb(cfg)
    ckpt_path = resume_point(cfg)
    if ckpt_path:
        quiet_resumed()  # its checkpoints/ folder is its own
    dm = instantiate(cfg.data, "data")  # its settings and the source's (nothing read yet)
    check_node(cfg.model, "model")  # the model itself is built once the vocabulary size is known
    check_backbone(cfg)
    resolve_weights(cfg.backbone.name, cfg.backbone.weights)
    trainer = build_trainer(cfg)  # Lightning checks its own arguments
    refuse_ddp_relaunch_in_multirun(trainer)
    out_dir = Path(cfg.paths.output_dir)

    L.seed_everything(cfg.seed, workers=True)  # after the checks: nothing above draws random numbers
    dm.setup()
    model = build_model(cfg, dm.num_tags)
    if ckpt_path:
        check_weights_fit(ckpt_path, model)
    check_val_check_interval(trainer, dm)
    planned = planned_steps(cfg, dm)
    need_images = finetunes(model, planned)
    facts = describe(cfg, dm, model, planned)  # also says whether the backbone will be fine-tuned
    if trainer.is_global_zero:
        log_summary(out_dir, facts)
    # Computing the features (when they are not cached yet) must not move the random stream training
    # draws from: a run gives the same result with or without a feature cache.
    with extraction_device(cfg, model), torch.random.fork_rng(devices=[]):
        attach_inputs(cfg, dm, model, need_images)

    # Every check has passed: the run is continued. Hydra made a new folder for this command's log before.
    log_file = command_log if ckpt_path and command_log and command_log.parent.resolve() != out_dir.resolve() else None
    try:
        log_config(trainer, cfg)
        keep_previous_csv(trainer)
        trainer.fit(model, datamodule=dm, ckpt_path=ckpt_path, weights_only=True)
        validate_if_never_validated(trainer, model, dm)
        fitted = {k: float(v) for k, v in trainer.callback_metrics.items()}
        tested = None
        if cfg.get("test") and not trainer.fast_dev_run:
            best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
            tested = f"test split, {best or 'last weights'}"
            metrics = trainer.test(model, datamodule=dm, ckpt_path=best or None, verbose=False, weights_only=True)[0]
            if trainer.is_global_zero:  # under DDP every rank has the same (synchronised) numbers
                report(dm, model, metrics, out_dir, title=tested)
        if trainer.is_global_zero:
            write_card(out_dir, facts, trainer, model, tested)
    except BaseException:
        _finish_wandb(failing=True)  # the error that ended the run is the one to report
        raise
    else:
        _finish_wandb()  # Lightning has finalized the loggers ("success" or "failed")
    finally:
        if log_file is not None and trainer.is_global_zero:
            append_log(log_file, out_dir / log_file.name)
    value = best_score(trainer, cfg.get("optimized_metric") or "", fitted)
    if value is not None and not math.isfinite(value):
        raise TagrankError(f"{cfg.optimized_metric} is {value}: this run diverged")  # a sweeper records a failed trial
    return value


def resume_point(cfg: DictConfig) -> str | None:
    """The checkpoint this run resumes from, and the run directory it continues.

    ``ckpt_path=<run>/checkpoints/last.ckpt`` continues ``<run>`` itself: its checkpoints (so the best
    checkpoint is still tracked), logs and W&B run (``<run>/wandb_id``). The checkpoint must have been
    written by the configured model's class (the ``tagrank_class`` it carries). Under SLURM a requeued job
    resumes by itself from the newer of the preemption checkpoint ``<run>/hpc_ckpt_N.ckpt``
    (which Lightning picks up when ckpt_path is None) and ``<run>/checkpoints/last.ckpt``.
    """
    from lightning.pytorch.plugins.environments import SLURMEnvironment

    from tagrank import checkpoint

    if cfg.get("ckpt_path"):
        ckpt = Path(cfg.ckpt_path).expanduser().resolve()
        if not ckpt.is_file():
            raise TagrankError(f"ckpt_path={cfg.ckpt_path!r} does not exist; pass <run>/checkpoints/last.ckpt to resume")
        written_by, wanted = checkpoint.model_class(ckpt), cfg.model._target_
        if written_by != wanted:
            raise TagrankError(f"ckpt_path={cfg.ckpt_path} was written by {written_by.rsplit('.', 1)[-1]}, not "
                               f"{wanted.rsplit('.', 1)[-1]}: resume with model={model_option(written_by)}")
        check_same_settings(ckpt, cfg)
        run_dir = ckpt.parent.parent
        if ckpt.parent.name == "checkpoints" and run_dir != Path(cfg.paths.output_dir).resolve():
            log.info("resuming run %s (its checkpoints, logs and W&B run continue there)", run_dir)
            with open_dict(cfg):
                cfg.paths.output_dir = str(run_dir)
        return str(ckpt)
    run_dir = Path(cfg.paths.output_dir)
    last = run_dir / "checkpoints" / "last.ckpt"
    if not SLURMEnvironment.detect():
        refuse_finished_run(run_dir)
    if SLURMEnvironment.detect():
        hpc = max(run_dir.glob("hpc_ckpt_*.ckpt"), key=lambda p: p.stat().st_mtime, default=None)
        if last.is_file() and (hpc is None or last.stat().st_mtime > hpc.stat().st_mtime):
            log.info("SLURM job restarted: resuming from %s", last)
            return str(last)
        if hpc is not None:  # Lightning resumes from it by itself; its own "Restoring states" line is filtered
            log.info("SLURM job restarted: resuming from %s", hpc)
    return None


def refuse_finished_run(run_dir: Path) -> None:
    """A new run in a folder that holds another run's checkpoints would write over them: e.g. an Optuna
    study continued into the ``hydra.sweep.dir`` of its first trials, whose trial folders 0, 1, ... Hydra
    numbers anew. Refused before anything is written there by tagrank (Hydra has already rewritten the
    folder's ``.hydra/``; the checkpoints, which hold their own settings, are what this keeps). Under
    SLURM a requeued job finds its own checkpoints there and resumes from them (:func:`resume_point`)."""
    found = sorted(p.name for p in (run_dir / "checkpoints").glob("*.ckpt"))
    if found:
        raise TagrankError(f"{run_dir} already holds a run's checkpoints ({', '.join(found)}): a new run there would "
                           f"write over them. Resume it with ckpt_path={run_dir / 'checkpoints' / ('last.ckpt' if 'last.ckpt' in found else found[-1])}, or give "
                           "this run a folder of its own (hydra.run.dir=..., or a new hydra.sweep.dir=... for a multirun)")


def append_log(mine: Path, theirs: Path) -> None:
    """A resumed run's own log goes on: this command's lines are added to it, after a line that says which
    command and where its own folder is."""
    for handler in logging.getLogger().handlers:
        handler.flush()
    if mine.is_file():
        with open(theirs, "a") as f:
            f.write(f"--- resumed by: tagrank-train {' '.join(sys.argv[1:])} (this command's folder: {mine.parent})\n"
                    f"{mine.read_text()}")


def model_option(class_path: str) -> str:
    """The ``model=`` option (conf/model/<name>.yaml) that builds ``class_path``."""
    for path in sorted((Path(CONF_DIR) / "model").glob("[!_]*.yaml")):
        if OmegaConf.load(path).get("_target_") == class_path:
            return path.stem
    return f"<a config whose _target_ is {class_path}>"


def check_same_settings(ckpt: Path, cfg: DictConfig) -> None:
    """A resumed run goes on as it started, or not at all: the settings its checkpoint was trained with
    (the model's hyperparameters and ``run_settings``) against this command's. Hydra composes a resume
    command from scratch, so a setting the first command overrode and this one leaves out would fall back
    to its default without a word (and Adam's restored state would quietly keep the old learning rate)."""
    from tagrank.pipeline import check_trained_with, run_settings

    model = OmegaConf.to_container(cfg.model, resolve=True)
    here = {f"model.{k}": v for k, v in model.items() if k != "_target_"} | run_settings(cfg)
    check_trained_with(ckpt, here, cfg.ckpt_path, "resume with the settings it was trained with")


def check_weights_fit(ckpt_path: str, model: L.LightningModule) -> None:
    """A checkpoint of the same class whose weights have other shapes (another ``model.hidden_size``,
    another vocabulary) would fail deep inside Lightning's restore: name the settings that differ."""
    from tagrank import checkpoint

    theirs = checkpoint.load(ckpt_path)
    mine = model.state_dict()
    misfits = [k for k, v in theirs["state_dict"].items() if k in mine and mine[k].shape != v.shape]
    if not misfits:
        return
    hp = theirs.get("hyper_parameters", {})
    differ = [f"{k}={hp[k]!r} there, {model.hparams[k]!r} here" for k in hp
              if k in model.hparams and hp[k] != model.hparams[k]]
    raise TagrankError(f"ckpt_path={ckpt_path}: its weights do not fit this model ({'; '.join(differ) or misfits[0]}); "
                       "resume with the settings it was trained with")


def check_val_check_interval(trainer: L.Trainer, dm: L.LightningDataModule) -> None:
    """An integer ``trainer.val_check_interval`` counts training batches within an epoch, and Lightning
    refuses one longer than an epoch, but only once fitting starts (after the features are computed)
    and with a traceback. Said here instead, where the epoch's length is certain (one process, every
    training batch used, or ``trainer.limit_train_batches`` of them, counted as Lightning counts them); under
    DDP Lightning's own check stands."""
    interval, limit = trainer.val_check_interval, trainer.limit_train_batches
    if not isinstance(interval, int) or trainer.check_val_every_n_epoch is None or trainer.world_size != 1:
        return
    batches = math.ceil(len(dm.rows("train")) / dm.batch_size)
    limited = ""
    if isinstance(limit, int):  # lightning's _parse_num_batches: an int is a count, a float a fraction
        batches, limited = min(batches, limit), f", trainer.limit_train_batches={limit}"
    elif limit != 1.0:
        batches, limited = int(batches * limit), f", trainer.limit_train_batches={limit}"
    if interval > batches:
        raise TagrankError(f"trainer.val_check_interval={interval} is longer than an epoch ({batches} training "
                           f"batches of {dm.batch_size}{limited}); set trainer.check_val_every_n_epoch=null to count "
                           f"it over the whole run, or a value up to {batches}")


def validate_if_never_validated(trainer: L.Trainer, model: L.LightningModule, dm: L.LightningDataModule) -> None:
    """Give a run that ended before its first validation a best.ckpt: its final weights, validated now.

    ``trainer.max_steps`` below one epoch, ``check_val_every_n_epoch`` beyond ``max_epochs`` or a
    ``val_check_interval`` beyond the run end training without a validation, so early stopping and the
    learning-rate plateau had nothing to compare (they act on validations only) and no checkpoint was
    selected. With validation turned off (``limit_val_batches=0``) the final weights are tested as they are.
    """
    ckpt = trainer.checkpoint_callback
    if trainer.fast_dev_run or ckpt is None or ckpt.monitor is None or ckpt.best_model_path:
        return
    if not trainer.limit_val_batches:
        log.info("validation is off (trainer.limit_val_batches=0): no checkpoint is selected, the final weights "
                 "are tested")
        return
    import torch

    model.final_validation = True  # still part of training: the scorer chooses its stop threshold on it
    try:
        trainer.validate(model, datamodule=dm, verbose=False, weights_only=True)
    finally:
        model.final_validation = False
    metrics = {**trainer.callback_metrics, "epoch": torch.tensor(trainer.current_epoch),
               "step": torch.tensor(trainer.global_step)}
    path = ckpt.format_checkpoint_name(metrics)
    # Chosen before it is written, so the checkpoint's own ModelCheckpoint state names it (trainer.test
    # restores that state from it).
    ckpt.best_model_path, ckpt.best_model_score = path, metrics[ckpt.monitor]
    trainer.save_checkpoint(path, weights_only=False)  # a full checkpoint, as ModelCheckpoint writes
    log.info("no validation during the %d training steps: validated the final weights (%s %.4f) and saved them as %s",
             trainer.global_step, ckpt.monitor, float(ckpt.best_model_score), path)


@contextmanager
def extraction_device(cfg: DictConfig, model: L.LightningModule):
    """Compute the backbone features on the GPU when the run trains on one (they are cached either way)."""
    import torch

    gpu = str(cfg.trainer.get("accelerator", "cpu")) in ("gpu", "cuda", "auto") and torch.cuda.is_available()
    if gpu:  # each DDP process on its own GPU (Lightning has not set the device yet)
        model.backbone.to(f"cuda:{int(os.environ.get('LOCAL_RANK', 0)) % torch.cuda.device_count()}")
    try:
        yield
    finally:
        if gpu:
            model.backbone.cpu()


def best_score(trainer: L.Trainer, metric: str, fitted: dict[str, float]) -> float | None:
    """What a sweeper optimises: the score of the checkpoint the run keeps (best.ckpt) when it is
    selected on that metric, not the last validation, which early stopping leaves past the best."""
    ckpt = trainer.checkpoint_callback
    if ckpt is not None and ckpt.monitor == metric and ckpt.best_model_score is not None:
        return float(ckpt.best_model_score)
    return fitted.get(metric)


def refuse_launcher_without_multirun() -> None:
    """``launcher=`` runs the jobs of a multirun; a single run would ignore it, and with launcher=slurm
    train here on trainer=gpu (which it selects) instead of submitting anything."""
    choice = HydraConfig.get().runtime.choices.get("launcher")
    if choice not in (None, "null") and not in_multirun():
        raise TagrankError(f"launcher={choice} runs the jobs of a multirun: add -m (tagrank-train -m launcher={choice} "
                           "seed=1,2 ...)")


def refuse_ddp_relaunch_in_multirun(trainer: L.Trainer) -> None:
    """DDP on one machine re-runs the command line once per extra process; in a multirun that would
    re-run the whole sweep. Under SLURM (``launcher=slurm``) the processes are SLURM tasks instead."""
    from lightning.pytorch.strategies.launchers.subprocess_script import _SubprocessScriptLauncher

    launcher = getattr(trainer.strategy, "launcher", None)
    # Lightning keeps this launcher under SLURM too, where it starts nothing (SLURM has started every process).
    if (in_multirun() and isinstance(launcher, _SubprocessScriptLauncher) and launcher.num_processes > 1
            and not launcher.cluster_environment.creates_processes_externally):
        raise TagrankError("trainer=ddp starts its extra processes by re-running the command, which a multirun "
                           "(-m, hparams_search) cannot do: run one DDP training per command, or sweep with "
                           "launcher=slurm and hydra.launcher.tasks_per_node=<GPUs per node>")


def _finish_wandb(failing: bool = False) -> None:
    """Close this process's W&B run. While an error ends the run (``failing``), a W&B that cannot close (its
    service stopped with the job) is a warning: the error that ended the run is the one to report."""
    if "wandb" in sys.modules:
        import wandb

        if wandb.run is not None:
            try:
                wandb.finish()
            except Exception as err:
                if not failing:
                    raise
                log.warning("the W&B run could not be closed (%s: %s); it is resumed with the run", type(err).__name__, err)


def train_command(cfg: DictConfig) -> float | None:
    """``train`` as ``tagrank-train`` runs it, where Hydra's own settings (the launcher) are this command's."""
    refuse_launcher_without_multirun()
    hydra_cfg = HydraConfig.get()
    folder = Path(hydra_cfg.runtime.output_dir)
    command_log = folder / f"{hydra_cfg.job.name}.log"
    try:
        with reporting_nothing_once_slurm_stops_the_job():
            return train(cfg, command_log)
    except USER_ERRORS:
        if cfg.get("ckpt_path") and not in_multirun():
            remove_command_folder(folder, command_log)
        raise


def remove_command_folder(folder: Path, command_log: Path) -> None:
    """A resume refused by its checks: the folder Hydra made for this command's log goes again, so a failed
    resume leaves no empty run behind (the resumed run is untouched: nothing is written there before the
    checks pass). Only a folder that holds nothing but Hydra's files (``.hydra/``, the command's log) is
    removed: ``hydra.run.dir`` pointed at the run itself, or anything else there, stays."""
    if folder.is_dir() and {p.name for p in folder.iterdir()} <= {".hydra", command_log.name}:
        shutil.rmtree(folder, ignore_errors=True)


@contextmanager
def reporting_nothing_once_slurm_stops_the_job() -> Iterator[None]:
    """Under SLURM, a job that SLURM stops (requeue, preemption, time limit, scancel) gets SIGTERM, then SIGKILL
    KillWait seconds later. What the SIGTERM does on the way must not be reported as the run's result: Lightning
    ends training with SIGTERMException, and the W&B service, which got the signal too, fails the next log call
    with ConnectionResetError, which Hydra would record as the run's error and submitit as the job's result, so
    that the sweep would end without the requeued job. Once SLURM has sent SIGTERM, the run ends with SystemExit
    (exit status 143), which neither records: the requeued job reports instead, from its checkpoint."""
    if "SLURM_JOB_ID" not in os.environ:  # not in a SLURM job: nothing to ask Lightning (seconds to import)
        yield
        return
    from lightning.pytorch.plugins.environments import SLURMEnvironment

    if not SLURMEnvironment.detect():
        yield
        return
    stopped: list[int] = []
    before = signal.getsignal(signal.SIGTERM)

    def take_note(signum, frame) -> None:
        stopped.append(signum)
        if callable(before):
            before(signum, frame)  # submitit's: it logs the signal
        elif before == signal.SIG_DFL:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)

    signal.signal(signal.SIGTERM, take_note)  # Lightning adds its own handler to it while it fits or tests
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, before)
        if stopped:  # in place of whatever error the SIGTERM caused, or of the result
            log.warning("SLURM stopped this job (SIGTERM): no result from it; a requeued job goes on from its checkpoint")
            raise SystemExit(128 + signal.SIGTERM)


main = command("train", train_command)


if __name__ == "__main__":
    main()
