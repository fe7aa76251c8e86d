"""Train, validate, then test the best checkpoint: ``python -m colorizer.run model=alpha``.

Leaves in the run directory: ``.hydra/`` (composed config), ``checkpoints/`` (``last.ckpt`` and
the best by ``val/psnr``), ``samples/*.png`` and ``metrics.json`` (SPEC §2).
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import DictConfig
from rich.console import Console
from rich.table import Table

from colorizer.callbacks import TrainingThroughput
from colorizer.cli import run_app

log = logging.getLogger(__name__)

SUMMARY_METRICS = ("psnr", "mse", "ssim", "cf", "delta_cf")


def _choice(group: str, fallback: str) -> str:
    """The config-group choice (``model=alpha`` -> "alpha") this run was composed with."""
    if HydraConfig.initialized():
        return str(HydraConfig.get().runtime.choices.get(group, fallback))
    return fallback


def _instantiate_all(section: DictConfig | None) -> list[Any]:
    return [instantiate(node) for node in (section or {}).values() if node is not None]


def train(cfg: DictConfig) -> dict[str, Any]:
    """Run one training job from a composed config; returns what it writes to metrics.json."""
    run_dir = Path(cfg.paths.output_dir)
    log.info("Run directory: %s", run_dir.resolve())
    L.seed_everything(cfg.seed, workers=True)

    datamodule = instantiate(cfg.data)
    model = instantiate(cfg.model)
    callbacks = _instantiate_all(cfg.get("callbacks"))
    loggers = _instantiate_all(cfg.get("logger"))
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)

    trainer.fit(model, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    global_step = trainer.global_step
    checkpoint = trainer.checkpoint_callback
    best = None
    if isinstance(checkpoint, ModelCheckpoint):
        best = checkpoint.best_model_path or checkpoint.last_model_path or None
    # Validation and test both measure the best checkpoint, so the two agree on one model.
    (val_metrics,) = trainer.validate(model, datamodule=datamodule, ckpt_path=best, verbose=False)
    (test_metrics,) = trainer.test(model, datamodule=datamodule, ckpt_path=best, verbose=False)

    throughput = next((c for c in trainer.callbacks if isinstance(c, TrainingThroughput)), None)
    summary: dict[str, Any] = {
        "model": _choice("model", type(model).__name__),
        "data": _choice("data", type(datamodule).__name__),
        "global_step": global_step,
        "train_images_per_s": throughput.images_per_s if throughput else None,
        "best_checkpoint": best,
        "run_dir": str(run_dir.resolve()),
        **{key: float(value) for key, value in {**val_metrics, **test_metrics}.items()},
    }
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "metrics.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    if trainer.is_global_zero:
        print_summary(summary)
    return summary


def print_summary(summary: dict[str, Any]) -> None:
    """The end-of-run table: the model next to the gray baseline on the test split."""

    def cell(key: str) -> str:
        value = summary.get(key)
        return "-" if value is None or not math.isfinite(value) else f"{value:.4f}"

    table = Table(title=f"{summary['model']} on {summary['data']} (test split, sRGB in [0, 1])")
    table.add_column("")
    for name in SUMMARY_METRICS:
        table.add_column(name.upper().replace("DELTA_", "Δ"), justify="right")
    table.add_row(summary["model"], *(cell(f"test/{name}") for name in SUMMARY_METRICS))
    table.add_row("gray baseline", *(cell(f"test/gray_{name}") for name in SUMMARY_METRICS))
    console = Console()
    console.print(table)
    console.print(f"Run directory: {summary['run_dir']}")


def main() -> None:
    run_app(train)


if __name__ == "__main__":
    main()
