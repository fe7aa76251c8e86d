"""Callbacks: sample grids of a fixed set of validation images, and training throughput."""

from __future__ import annotations

import logging
import os
import random
import time
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger
from PIL import Image
from torchvision.utils import make_grid

from colorizer.errors import TrainingDiverged, require_int
from colorizer.models.base import triplets

log = logging.getLogger(__name__)


class SampleGrids(L.Callback):
    """Gray | prediction | truth grids (one row per image) to every active logger.

    The images are the first ``num_images`` of the first validation batch, which is the same
    every epoch (validation is not shuffled), so grids of successive steps are comparable.
    Always written as PNG files (``dirpath/step_NNNNNN.png`` at each validation within fit and
    ``dirpath/test.png``); also sent as images to W&B and TensorBoard when those log. A later
    ``trainer.validate`` (the run scoring its best checkpoint) makes no grid: it would replace
    the final step's with an earlier model's. Each grid is converted to 8 bits once
    (:func:`triplet_grid`), and those same pixels go to the file and to every logger.
    """

    def __init__(self, dirpath: str, num_images: int = 8) -> None:
        self.dirpath = Path(dirpath)
        self.num_images = num_images
        self._grid: np.ndarray | None = None

    def on_validation_batch_end(
        self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0
    ):
        first = batch_idx == 0 and dataloader_idx == 0
        if first and trainer.state.fn == "fit" and not trainer.sanity_checking:
            self._grid = self._make_grid(batch, outputs)

    def on_validation_epoch_end(self, trainer, pl_module):
        if self._grid is not None and trainer.is_global_zero:
            self._publish(trainer, self._grid, f"step_{trainer.global_step:06d}.png", "val")
        self._grid = None

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        if batch_idx == 0 and trainer.is_global_zero:
            self._publish(trainer, self._make_grid(batch, outputs), "test.png", "test")

    def _make_grid(self, batch: torch.Tensor, prediction: torch.Tensor) -> np.ndarray:
        # The prediction the step scored (its precision, no second forward pass, and for a
        # compiled network no other batch size to compile for).
        n = self.num_images
        return triplet_grid(triplets(batch[:n], prediction[:n]))

    def _publish(self, trainer, grid: np.ndarray, name: str, stage: str) -> None:
        self.dirpath.mkdir(parents=True, exist_ok=True)
        image = Image.fromarray(grid)
        image.save(self.dirpath / name)
        key, step = f"samples/{stage}", trainer.global_step
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                # A PIL image: wandb stores it as it is (a float tensor it would cast to
                # uint8 unscaled, so [0, 1] became black).
                caption = "rows: gray | prediction | truth"
                logger.log_image(key=key, images=[image], step=step, caption=[caption])
            elif isinstance(logger, TensorBoardLogger):
                # uint8 is taken as it is; floats would be scaled and truncated, not rounded.
                logger.experiment.add_image(key, grid, global_step=step, dataformats="HWC")


def triplet_grid(triplets: torch.Tensor) -> np.ndarray:
    """Gray | prediction | truth rows as the 8-bit image every writer and logger gets.

    ``[B, 3, 3, H, W]`` float in [0, 1] (clipped) -> uint8 RGB ``[B (H + 2) + 2, 3 (W + 2) + 2,
    3]``: a row per image, 2-pixel white padding, each value rounded to the nearest level.
    """
    grid = make_grid(triplets.flatten(0, 1).float().cpu(), nrow=3, padding=2, pad_value=1.0)
    return grid.mul(255.0).add_(0.5).clamp_(0.0, 255.0).to(torch.uint8).permute(1, 2, 0).numpy()


class TrainingThroughput(L.Callback):
    """Measures steady-state training images/s, data loading included, validation excluded,
    and the share of that time the loop waited for data; says once if it is large.

    Time is taken over segments of consecutive training batches: a segment opens at a batch
    end once ``warmup_batches`` are behind (allocator, worker start-up, autotuning) and closes
    when validation starts or training ends. The device is synchronised only at those
    boundaries, never per step. The results are ``images_per_s`` and
    ``data_wait_fraction`` (None if nothing was timed). When the loop spent more than
    ``warn_data_wait`` of a segment waiting for batches (the training stream's own clock,
    :class:`~colorizer.data.stream.TrainingBatches`), one warning says what to change.
    """

    def __init__(self, warmup_batches: int = 5, warn_data_wait: float = 0.25) -> None:
        self.warmup_batches = warmup_batches
        self.warn_data_wait = warn_data_wait
        self._batches_seen = 0
        self._segment_start: float | None = None
        self._segment_wait = 0.0
        self._segment_images = 0
        self._images = 0
        self._seconds = 0.0
        self._waited = 0.0
        self._warned = False

    @property
    def images_per_s(self) -> float | None:
        return self._images / self._seconds if self._seconds > 0 else None

    @property
    def data_wait_fraction(self) -> float | None:
        """Share of the timed training time spent waiting for the next batch."""
        return self._waited / self._seconds if self._seconds > 0 else None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self._batches_seen += 1
        if self._segment_start is not None:
            self._segment_images += batch.shape[0]
        elif self._batches_seen >= self.warmup_batches:
            self._segment_start = self._now(pl_module)
            self._segment_wait = _data_wait(trainer)
            self._segment_images = 0

    def on_validation_start(self, trainer, pl_module):
        self._close_segment(trainer, pl_module)

    def on_train_end(self, trainer, pl_module):
        self._close_segment(trainer, pl_module)

    def _close_segment(self, trainer, pl_module) -> None:
        if self._segment_start is not None and self._segment_images > 0:
            seconds = self._now(pl_module) - self._segment_start
            waited = _data_wait(trainer) - self._segment_wait
            self._seconds += seconds
            self._images += self._segment_images
            self._waited += waited
            if not self._warned and waited > self.warn_data_wait * seconds:
                self._warned = True
                log.warning("%s", data_wait_advice(waited / seconds, trainer.datamodule))
        self._segment_start = None

    @staticmethod
    def _now(pl_module) -> float:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)  # kernels still queued belong to this segment
        return time.perf_counter()


def _data_wait(trainer: L.Trainer) -> float:
    """Seconds the training loop has waited for batches so far (0 for loaders that do not
    keep this clock)."""
    return getattr(trainer.train_dataloader, "wait_s", 0.0)


def data_wait_advice(fraction: float, datamodule: Any) -> str:
    """One line: how much of training went to waiting for data, and what to change."""
    workers = getattr(datamodule, "num_workers", None)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    advice = [f"raise data.num_workers (now {workers}; this machine has {cores} cores)"]
    if getattr(datamodule, "memory_cache_mb", None) == 0:
        advice.append("let data.memory_cache_mb keep decoded photos (0 now)")
    if getattr(datamodule, "resized_cache", "") is None:
        advice.append("set data.resized_cache=DIR (copies at training size decode faster)")
    return (
        f"training waited for data {fraction:.0%} of the time (decoding and cropping images "
        f"could not keep up with the model): {' or '.join(advice)}"
    )


class ValidateTheEnd(L.Callback):
    """Validates (and so checkpoints) the last state of every run, not just the last interval.

    Lightning validates every ``val_check_interval`` training batches but stops at
    ``max_steps`` optimizer steps, so a run whose end falls between two validations (the GAN
    takes two optimizer steps per batch: 240 steps are 120 batches, validated at batch 80
    only) would leave its last 40 batches unvalidated and out of ``last.ckpt``. At the final
    batch this asks the loop to stop, which is what makes Lightning validate there, once
    (also when the interval falls on it); ``ModelCheckpoint`` then saves after validation.
    """

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not self._final_batch(trainer):
            return
        trainer.should_stop = True
        # Epoch-based runs validate only every check_val_every_n_epoch epochs: not the last
        # one unless it is a multiple. Step-based (None) validation covers any epoch.
        trainer.check_val_every_n_epoch = None

    @staticmethod
    def _final_batch(trainer: L.Trainer) -> bool:
        if 0 <= trainer.max_steps <= trainer.global_step:
            return True
        last_epoch = trainer.max_epochs is not None and trainer.max_epochs >= 0
        last_epoch = last_epoch and trainer.current_epoch + 1 >= trainer.max_epochs
        return last_epoch and trainer.fit_loop.epoch_loop.batch_progress.is_last_batch


class NonFiniteGuard(L.Callback):
    """Stops training at a NaN or infinite loss, and never lets one into a checkpoint.

    The model records on the device the first step at which each loss was not finite
    (``track_finite``); this reads it every ``check_every_n_steps`` steps, before every
    validation and at the end, so a GPU is not synchronised with the host every step. Before
    any checkpoint is written it also checks the weights themselves (an optimizer step on a
    huge gradient can make them infinite before any loss shows it): a diverged state is never
    saved, so the checkpoints on disk are the last good ones. Raises ``TrainingDiverged``.
    """

    def __init__(self, check_every_n_steps: int = 50) -> None:
        require_int("callbacks.nonfinite.check_every_n_steps", check_every_n_steps)
        self.check_every_n_steps = check_every_n_steps
        self._checked_at = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step - self._checked_at >= self.check_every_n_steps:
            self._check_losses(trainer, pl_module)

    def on_validation_start(self, trainer, pl_module) -> None:
        if trainer.state.fn == "fit":  # validation within fit; not trainer.validate()
            self._check_losses(trainer, pl_module)

    def on_train_end(self, trainer, pl_module) -> None:
        self._check_losses(trainer, pl_module)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        self._check_losses(trainer, pl_module)
        bad = [name for name, p in pl_module.named_parameters() if not p.isfinite().all()]
        if bad:
            self._stop(trainer, f"{len(bad)} weight tensors (first: {bad[0]}) became NaN or "
                       f"infinite by step {trainer.global_step}")  # fmt: skip

    def _check_losses(self, trainer, pl_module) -> None:
        self._checked_at = trainer.global_step
        first = pl_module.first_nonfinite_loss() if hasattr(pl_module, "track_finite") else None
        if first is not None:
            step, name = first
            self._stop(trainer, f"{name} was NaN or infinite at step {step}")

    @staticmethod
    def _stop(trainer, what: str) -> None:
        saved = [
            getattr(callback, attribute, "")
            for callback in trainer.callbacks
            for attribute in ("last_model_path", "best_model_path")
        ]
        kept = next((path for path in saved if path and Path(path).is_file()), None)
        where = f"the last good checkpoint is {kept}" if kept else "no checkpoint was saved"
        raise TrainingDiverged(
            f"training diverged: {what}; stopped, {where}. Lower model.lr and train again"
        )


class RandomStates(L.Callback):
    """Gives each training process its own random stream, and checkpoints every process's.

    The device augmentation and the GAN's dropout draw from the global generators. Seeded
    alike (``seed_everything``), every DDP process would flip, warp and drop out exactly as
    the others do, so N processes would see one random stream instead of N. At the start of
    fit, process ``rank`` seeds Python, NumPy and torch (CPU and its GPU) with
    ``seed + rank``: a single process, or rank 0, draws what it always did from ``seed``.

    Lightning saves the model, optimizers and loops but not these generators: without them a
    resumed run goes on with other random numbers than one that never stopped. Each process's
    states are gathered into the checkpoint (``ranks``, one entry per process) and each
    process restores its own. Stored as tensors and plain values, so checkpoints still load
    with ``weights_only=True``.
    """

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed
        self._rank, self._device = 0, torch.device("cpu")

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._rank, self._device = trainer.global_rank, trainer.strategy.root_device
        if stage == "fit":
            seed = self.seed + self._rank
            random.seed(seed)
            np.random.seed(seed % 2**32)  # noqa: NPY002 - the legacy generator libraries use
            torch.manual_seed(seed)

    def state_dict(self) -> dict[str, Any]:
        # Lightning builds the checkpoint in every process and writes rank 0's.
        own = self._own_state()
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            return {"ranks": [own]}
        states: list[Any] = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(states, own)
        return {"ranks": states}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        states = state_dict.get("ranks", [state_dict])  # a checkpoint from before per-rank states
        if self._rank >= len(states):
            log.warning(
                "the checkpoint holds the random states of %d processes; process %d keeps its "
                "fresh seed (%d), so its augmentation will not repeat the interrupted run's",
                len(states), self._rank, self.seed + self._rank,
            )  # fmt: skip
            return
        self._restore(states[self._rank])

    def _own_state(self) -> dict[str, Any]:
        # The legacy global generator: what libraries and seed_everything use.
        name, keys, position, has_gauss, cached = np.random.get_state()  # noqa: NPY002
        state = {
            "torch": torch.get_rng_state(),
            "python": random.getstate(),
            "numpy": [name, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, cached],
        }
        if self._device.type == "cuda":  # this process's GPU only: others belong to others
            state["cuda"] = torch.cuda.get_rng_state(self._device)
        return state

    def _restore(self, state: dict[str, Any]) -> None:
        torch.set_rng_state(state["torch"])
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))
        name, keys, position, has_gauss, cached = state["numpy"]
        numpy_state = (name, keys.numpy().astype(np.uint32), position, has_gauss, cached)
        np.random.set_state(numpy_state)  # noqa: NPY002
        if "cuda" in state and self._device.type == "cuda":
            torch.cuda.set_rng_state(state["cuda"], self._device)
