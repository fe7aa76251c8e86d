"""Train, validate, then test the best checkpoint: ``python -m colorizer.run model=alpha``.

Leaves in the run directory: ``.hydra/`` (composed config), ``checkpoints/`` (``last.ckpt`` and
the best by ``val/psnr``), ``samples/*.png`` and ``metrics.json`` (README, Outputs).
"""

from __future__ import annotations

import logging
import os
import signal
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from lightning.fabric.plugins import CheckpointIO
from lightning.fabric.plugins.environments import ClusterEnvironment
from lightning.pytorch.accelerators import CPUAccelerator
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.plugins.environments import SLURMEnvironment
from lightning.pytorch.strategies.launchers import _SubprocessScriptLauncher
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf

from colorizer.callbacks import TrainingThroughput
from colorizer.checkpoints import BackgroundCheckpointIO, LastCheckpoint
from colorizer.cli import run_app
from colorizer.errors import ConfigError
from colorizer.metrics import METRIC_COLUMNS
from colorizer.models import read_checkpoint
from colorizer.registry import DATA_SOURCES, MODELS
from colorizer.report import ResultTable, cell, write_report

log = logging.getLogger(__name__)

SUMMARY_METRICS = ("psnr", "mse", "ssim", "cf", "delta_cf")


def _instantiate_all(section: DictConfig | None) -> list[Any]:
    return [instantiate(node) for node in (section or {}).values() if node is not None]


def _strategy_for(cfg: DictConfig, model: L.LightningModule) -> dict[str, Any]:
    """DDP for the GAN must look for unused parameters: its D step does not use G's.

    Checkpoints are written in the background (``BackgroundCheckpointIO``), so that saving
    never holds training up, unless ``trainer.plugins`` gives a CheckpointIO of its own.
    Under SLURM, requeueing belongs to submitit (``hydra/launcher=slurm``): Lightning's own
    SIGUSR1 auto-requeue is switched off so that one job is never requeued twice.
    """
    options: dict[str, Any] = {}
    if cfg.trainer.get("strategy") == "ddp" and not model.automatic_optimization:
        options["strategy"] = "ddp_find_unused_parameters_true"
    # Passed as one list, which replaces trainer.plugins: those the config gives come first.
    given = cfg.trainer.get("plugins") or []
    given = instantiate(given, _convert_="all") if OmegaConf.is_config(given) else given
    plugins = list(given) if isinstance(given, list | tuple) else [given]
    if not any(isinstance(plugin, CheckpointIO) for plugin in plugins):
        plugins.append(BackgroundCheckpointIO())
    if SLURMEnvironment.detect() and not any(isinstance(p, ClusterEnvironment) for p in plugins):
        plugins.append(SLURMEnvironment(auto_requeue=False))
    options["plugins"] = plugins
    return options


def _evaluation_mode_for(cfg: DictConfig) -> dict[str, Any]:
    """A compiled network evaluates under ``no_grad`` in validate and test too: compiled code
    is specialised on inference mode, and Lightning's default (inference mode in validate and
    test, ``no_grad`` in the validations of fit) would compile every network once more."""
    if cfg.compile and "inference_mode" not in cfg.trainer:
        return {"inference_mode": False}
    return {}


def _refuse_sweep_relaunch(trainer: L.Trainer) -> None:
    """Lightning's DDP starts the other processes of a machine by re-running the command line;
    in a Hydra multirun that command is the whole sweep, so each would start it again."""
    if not (HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN):
        return
    if isinstance(trainer.strategy.launcher, _SubprocessScriptLauncher) and (
        trainer.num_devices > 1
    ):
        raise ConfigError(
            "--multirun with DDP on several devices would re-run the whole sweep in every "
            "process: add hydra/launcher=slurm (SLURM starts one task per device), or run "
            "each setting as its own command"
        )


def train(cfg: DictConfig) -> dict[str, Any]:
    """Run one training job from a composed config; returns what it writes to metrics.json."""
    run_dir = Path(cfg.paths.output_dir)
    if rank_zero_only.rank == 0:  # the other DDP processes run this too
        log.info("Run directory: %s", run_dir.resolve())
    L.seed_everything(cfg.seed, workers=True)

    datamodule = instantiate(cfg.data)
    model = instantiate(cfg.model)
    MODELS.name_or_fail(model)  # what it trains, load_model can load
    DATA_SOURCES.name_or_fail(datamodule)
    model.set_training_size(datamodule.image_size)
    if cfg.compile:
        # Compiled code is cached per function (every nn.Sequential shares one forward) up
        # to dynamo's recompile limit (8): the jobs of a sweep run in one process would
        # exhaust it and silently run uncompiled. Each job starts from a clean cache.
        torch._dynamo.reset()
    model.apply_speed_options(compile=bool(cfg.compile), channels_last=bool(cfg.channels_last))
    callbacks = _instantiate_all(cfg.get("callbacks"))
    loggers = _instantiate_all(cfg.get("logger"))
    trainer: L.Trainer = instantiate(
        cfg.trainer,
        callbacks=callbacks,
        logger=loggers or False,
        **_strategy_for(cfg, model),
        **_evaluation_mode_for(cfg),
    )
    if cfg.trainer.get("sync_batchnorm") and isinstance(trainer.accelerator, CPUAccelerator):
        raise ConfigError("trainer.sync_batchnorm=true needs GPUs (SyncBatchNorm is CUDA-only)")
    _refuse_sweep_relaunch(trainer)
    # The whole composed config (Hydra's own settings aside), so a run can be repeated from its log.
    job_config = OmegaConf.masked_copy(cfg, [key for key in cfg if key != "hydra"])
    for logger in loggers:
        logger.log_hyperparams({"config": OmegaConf.to_container(job_config, resolve=True)})
    try:
        return _fit_and_test(cfg, trainer, model, datamodule, run_dir)
    except SIGTERMException:
        # Lightning ends fit, validate and test this way at SIGTERM, with exit status 0,
        # which a scheduler would take for a finished job.
        if trainer.is_global_zero:
            log.warning("%s", _stopped_by_sigterm(trainer, run_dir))
        raise SystemExit(128 + signal.SIGTERM) from None
    finally:
        for logger in loggers:
            if isinstance(logger, WandbLogger):  # one W&B run per job, also in a multirun
                logger.experiment.finish()


def _fit_and_test(
    cfg: DictConfig,
    trainer: L.Trainer,
    model: L.LightningModule,
    datamodule: L.LightningDataModule,
    run_dir: Path,
) -> dict[str, Any]:
    checkpoint_path = resume_from(cfg.get("ckpt_path"), run_dir, model)
    try:
        trainer.fit(model, datamodule=datamodule, ckpt_path=checkpoint_path)
    except RuntimeError as err:
        if "Error(s) in loading state_dict" not in str(err):
            raise
        raise ConfigError(
            f"ckpt_path={checkpoint_path} was trained with other model settings "
            f"({_hparams_diff(checkpoint_path, model)}): use the settings it was trained with"
        ) from err
    global_step = trainer.global_step
    # The best by val/psnr; without validation, the last state.
    saved = [
        getattr(callback, attribute, "")
        for attribute in ("best_model_path", "last_model_path")
        for callback in trainer.callbacks
        if isinstance(callback, ModelCheckpoint | LastCheckpoint)
    ]
    best = next((path for path in saved if path), None)
    last = next((c for c in trainer.callbacks if isinstance(c, LastCheckpoint)), None)
    if best and last is not None and trainer.is_global_zero:
        store_final_state_once(best, last.path)
    if best and trainer.is_global_zero:
        log.info("Scoring the best checkpoint, %s, on the validation and test images", best)
        warn_if_uneven(trainer, datamodule)
    # Validation and test both measure the best checkpoint, so the two agree on one model.
    (val_metrics,) = trainer.validate(model, datamodule=datamodule, ckpt_path=best, verbose=False)
    (test_metrics,) = trainer.test(model, datamodule=datamodule, ckpt_path=best, verbose=False)

    throughput = next((c for c in trainer.callbacks if isinstance(c, TrainingThroughput)), None)
    summary: dict[str, Any] = {
        "model": MODELS.name_or_fail(model),
        "data": DATA_SOURCES.name_or_fail(datamodule),
        "global_step": global_step,
        "train_images_per_s": throughput.images_per_s if throughput else None,
        "train_data_wait_fraction": throughput.data_wait_fraction if throughput else None,
        "time_to_first_batch_s": getattr(datamodule, "first_batch_s", None),
        "best_checkpoint": best,
        "run_dir": str(run_dir.resolve()),
        **{key: float(value) for key, value in {**val_metrics, **test_metrics}.items()},
    }
    if trainer.is_global_zero:  # under DDP every process has the same, synchronised summary
        write_report(run_dir, summary, table=summary_table(summary),
                     lines=[f"Run directory: {summary['run_dir']}"])  # fmt: skip
    return summary


def _stopped_by_sigterm(trainer: L.Trainer, run_dir: Path) -> str:
    """One line: where a run stopped by SIGTERM is, and how to go on."""
    step = trainer.global_step
    if trainer.state.fn != "fit":
        return (
            f"stopped by SIGTERM while scoring the checkpoints (training had ended at step "
            f"{step}): score the best with python -m colorizer.evaluate ckpt_path=FILE"
        )
    last = next((c for c in trainer.callbacks if isinstance(c, LastCheckpoint)), None)
    if last is None or not last.last_model_path:
        return f"stopped by SIGTERM at step {step}, before any checkpoint was saved"
    return (
        f"stopped by SIGTERM at step {step}, saved in {last.path}: add "
        f"hydra.run.dir={run_dir} ckpt_path=last to continue"
    )


def warn_if_uneven(trainer: L.Trainer, datamodule: L.LightningDataModule) -> None:
    """Under DDP each process gets as many images: a split that does not divide evenly has a
    few repeated, which shifts its metrics a little (colorizer.evaluate scores it exactly)."""
    processes = trainer.world_size
    for split in ("val", "test"):
        dataset = getattr(datamodule, f"{split}_set", None)
        size = len(dataset) if dataset is not None else 0  # type: ignore[arg-type]
        if processes > 1 and size % processes:
            log.warning(
                "the %s split's %d images do not divide among %d processes: %d are scored "
                "twice; colorizer.evaluate gives its exact metrics",
                split, size, processes, processes - size % processes,
            )  # fmt: skip


def store_final_state_once(best: str, last: Path) -> None:
    """When the best checkpoint is the run's final state, make it the same file as
    ``last.ckpt`` (a hard link), so that the final state takes disk space once."""
    if not last.is_file() or Path(best) == last:
        return
    if _checkpoint(best)["global_step"] != _checkpoint(str(last))["global_step"]:
        return
    linked = Path(best).with_suffix(".link")
    try:
        os.link(last, linked)  # a new name for last's data, then swapped in atomically
        os.replace(linked, best)
    except OSError:  # a file system without hard links keeps two files
        linked.unlink(missing_ok=True)


def resume_from(ckpt_path: str | None, run_dir: Path, model: L.LightningModule) -> str | None:
    """The checkpoint to resume from: ``ckpt_path``; for ``last`` the newest ``last*.ckpt``
    of this run directory (``callbacks.last`` writes ``last.ckpt``); for
    ``auto`` the same if there is one, else none (a fresh start).

    A job started by submitit (``hydra/launcher=slurm``) runs as ``auto`` once its run
    directory holds a checkpoint, or when no ``ckpt_path`` was given: when SLURM requeues it
    after a time-out or pre-emption, it continues from its own last checkpoint, not from the
    start or from the checkpoint it was first started from. Refuses, in one line, a missing
    file and a checkpoint of another architecture.
    """
    folder = run_dir / "checkpoints"
    candidates = list(folder.glob("last*.ckpt"))
    if os.environ.get("SUBMITIT_EXECUTOR") and (ckpt_path is None or candidates):
        if ckpt_path not in (None, "last", "auto"):
            log.info("Requeued job: its own checkpoints replace ckpt_path=%s", ckpt_path)
        ckpt_path = "auto"
    if ckpt_path is None:
        return None
    if ckpt_path in ("last", "auto"):
        if not candidates and ckpt_path == "auto":
            log.info("ckpt_path=auto: no checkpoint in %s yet, starting from scratch", folder)
            return None
        if not candidates:
            raise ConfigError(
                f"ckpt_path=last, but {folder} holds no last*.ckpt: add "
                "hydra.run.dir=RUN_DIR, the directory of the run to continue"
            )
        ckpt_path = str(max(candidates, key=lambda path: path.stat().st_mtime_ns))
        log.info("Resuming from %s", ckpt_path)
    if not Path(ckpt_path).is_file():
        raise ConfigError(f"ckpt_path={ckpt_path} does not exist: pass a .ckpt file, last or auto")
    saved = _checkpoint(ckpt_path).get("colorizer_model", "")
    ours = MODELS.name_or_fail(model)
    if saved and MODELS.name_of(saved) != ours:
        theirs = MODELS.name_of(saved) or saved
        raise ConfigError(
            f"ckpt_path={ckpt_path} is a {theirs} checkpoint, but this run builds "
            f"model={ours}: add model={theirs}"
        )
    return ckpt_path


def _checkpoint(path: str) -> dict[str, Any]:
    """A checkpoint's contents, memory-mapped (tensors are not read unless used)."""
    return read_checkpoint(path, mmap=True)


def _hparams_diff(path: str, model: L.LightningModule) -> str:
    saved = _checkpoint(path).get("hyper_parameters", {})
    differing = [
        f"model.{key}={saved[key]!r} there, {value!r} here"
        for key, value in model.hparams.items()
        if key in saved and saved[key] != value
    ]
    return "; ".join(differing) or "different layer shapes"


def summary_table(summary: dict[str, Any]) -> ResultTable:
    """The end-of-run table: the model next to the gray baseline on the test split."""
    table = ResultTable(
        f"{summary['model']} on {summary['data']} (test split, sRGB in [0, 1])",
        ["", *(METRIC_COLUMNS[name] for name in SUMMARY_METRICS)],
    )
    for label, prefix in ((summary["model"], ""), ("gray baseline", "gray_")):
        values = (cell(summary.get(f"test/{prefix}{name}")) for name in SUMMARY_METRICS)
        table.add_row(label, *values)
    return table


def train_for_sweep(cfg: DictConfig) -> float | None:
    """``train``, returning the value of ``cfg.optimized_metric`` for Hydra's sweepers."""
    summary = train(cfg)
    metric = cfg.get("optimized_metric")
    if metric and metric not in summary:
        raise ConfigError(f"optimized_metric={metric} is not one of the run's metrics")
    return summary.get(metric) if metric else None


def main() -> None:
    run_app(train_for_sweep)


if __name__ == "__main__":
    main()
