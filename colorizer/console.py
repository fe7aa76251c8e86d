"""What a run shows on the console: its phases, a step progress bar, one line of metrics per
validation, the final table, and the warnings that matter. Library chatter goes to the run
directory's log file only.
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from typing import Any

import lightning as L
from lightning.pytorch.callbacks.progress import ProgressBar
from rich import progress
from rich.console import Console
from rich.text import Text

# Warnings about situations this project creates on purpose (matched at the message start).
EXPECTED_WARNINGS = (
    # Lightning's pytree helper against torch 2.14's deprecation of LeafSpec.
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",
    # Logging counts optimizer steps across epochs, so tiny epochs are fine.
    r"The number of training batches \(\d+\) is smaller than the logging interval",
    # fullcnn's frozen classifier stays in eval mode on purpose.
    r"Found \d+ module\(s\) in eval mode at the start of training",
    # A resumed run writes into its own checkpoint folder.
    r"Checkpoint directory .* exists and is not empty",
    # The training stream resumes mid-epoch by itself (colorizer.data.stream).
    r"You're resuming from a checkpoint that ended before the epoch ended",
    # Scoring under DDP: colorizer.run says when a split is uneven (run.warn_if_uneven).
    r"Using `DistributedSampler` with the dataloaders. During `trainer.(validate|test)\(\)`",
)
CHATTY_LOGGERS = ("lightning", "pytorch_lightning")


def quiet_libraries() -> None:
    """Send Lightning's info lines to the log file only, warnings through logging as one line
    each, and drop the warnings listed in ``EXPECTED_WARNINGS``.

    Call once a job's logging is configured (Hydra does it before the job starts).
    """
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning"):
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):  # Lightning's own stderr handlers
            logger.removeHandler(handler)
        logger.propagate = True
    for handler in logging.getLogger().handlers:
        if not isinstance(handler, logging.FileHandler):
            handler.addFilter(_no_library_info)
    for pattern in EXPECTED_WARNINGS:
        warnings.filterwarnings("ignore", pattern)
    warnings.showwarning = _log_warning


def _no_library_info(record: logging.LogRecord) -> bool:
    return record.levelno >= logging.WARNING or not record.name.startswith(CHATTY_LOGGERS)


def _log_warning(message, category, filename, lineno, file=None, line=None) -> None:
    logging.getLogger("py.warnings").warning("%s: %s", category.__name__, message)


class ConsoleFormatter(logging.Formatter):
    """Info as plain lines; warnings and errors prefixed by their level."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.levelno >= logging.WARNING:
            message = f"{record.levelname.lower()}: {message}"
        return message


class Rate(progress.ProgressColumn):
    """Steps per second, from the bar's recent updates."""

    def render(self, task: progress.Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text("-" if speed is None else f"{speed:.2f} {task.fields['unit']}/s")


# The metrics of the one validation line, in this order (others, such as FID, follow).
VALIDATION_ORDER = ("psnr", "ssim", "mse", "cf", "delta_cf", "loss")


def validation_line(step: int, metrics: dict[str, Any]) -> str:
    """``step 80 · val psnr 15.21 (gray 13.98) · ssim 0.763 · ...``: one line, any width."""
    names = [key[4:] for key in metrics if key.startswith("val/") and "gray_" not in key]
    names.sort(key=lambda n: VALIDATION_ORDER.index(n) if n in VALIDATION_ORDER else len(names))
    parts = []
    for name in names:
        text = f"{name.replace('delta_', 'Δ')} {float(metrics[f'val/{name}']):.4g}"
        if f"val/gray_{name}" in metrics and name == "psnr":
            text += f" (gray {float(metrics['val/gray_psnr']):.4g})"
        parts.append(text)
    return f"step {step} · val " + " · ".join(parts)


def _values(metrics: dict[str, Any], keys: list[str]) -> str:
    return " ".join(f"{key.split('/', 1)[1]} {float(metrics[key]):.4g}" for key in keys)


class TrainingProgress(ProgressBar):
    """The console view of ``trainer.fit``, ``validate`` and ``test``.

    Training is one bar counting optimizer steps (``trainer.max_steps``; epochs times batches
    when training by epochs), with elapsed and remaining time, steps/s and the latest losses,
    read from the device at most every ``refresh_s`` seconds. Each validation within fit
    prints one line: its step, then each metric and the gray baseline's PSNR. Where the
    console is not a terminal (a log file, a SLURM job), a plain line every 10 % replaces the
    bar. Evaluation passes show a transient bar; the sanity check shows nothing.
    """

    refresh_s = 0.5

    def __init__(self) -> None:
        super().__init__()
        self._enabled = True
        self.console = Console()
        self._bar: progress.Progress | None = None
        self._train: progress.TaskID | None = None
        self._eval: progress.TaskID | None = None
        self._shown_at = -math.inf
        self._logged_tenth = -1

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    @property
    def is_enabled(self) -> bool:
        return self._enabled and self.trainer.is_global_zero

    def _steps(self, trainer: L.Trainer) -> tuple[int, float | None, str]:
        """(done, total, unit): optimizer steps, or batches of an epoch-based run."""
        final_batch = getattr(trainer.datamodule, "final_batch", None)  # the training stream's
        if final_batch is not None:
            return trainer.datamodule.batches_trained, final_batch, "batches"
        if trainer.max_steps is not None and trainer.max_steps > 0:
            return trainer.global_step, trainer.max_steps, "steps"
        done = trainer.fit_loop.total_batch_idx + 1
        total = (trainer.max_epochs or -1) * trainer.num_training_batches
        return done, total if 0 < total < math.inf else None, "batches"

    def _start(self, transient: bool) -> progress.Progress:
        columns = (
            progress.TextColumn("{task.description}"),
            progress.BarColumn(bar_width=30),
            progress.TimeElapsedColumn(),
            progress.TextColumn("ETA"),
            progress.TimeRemainingColumn(),
            Rate(),
            progress.TextColumn("{task.fields[losses]}"),
        )
        bar = progress.Progress(*columns, console=self.console, transient=transient)
        bar.start()
        return bar

    def on_train_start(self, trainer, pl_module) -> None:
        if not self.is_enabled:
            return
        trainable = sum(p.numel() for p in pl_module.parameters() if p.requires_grad)
        frozen = sum(p.numel() for p in pl_module.parameters()) - trainable
        spec = getattr(pl_module, "spec", None)
        name = spec.name if spec is not None else type(pl_module).__name__
        self.console.print(
            f"training {name}: {trainable / 1e6:.2f} M trainable parameters"
            + (f" (+ {frozen / 1e6:.1f} M frozen)" if frozen else "")
            + f", on {trainer.strategy.root_device.type}"
            + (f" x {trainer.world_size} processes" if trainer.world_size > 1 else ""),
            soft_wrap=True,
        )
        done, total, unit = self._steps(trainer)
        self._bar = self._start(transient=False)
        self._train = self._bar.add_task(
            self._describe(done, total, unit), total=total, completed=done, losses="", unit=unit
        )

    @staticmethod
    def _describe(done: int, total: float | None, unit: str) -> str:
        name = unit.removesuffix("es") if unit.endswith("ches") else unit.removesuffix("s")
        return f"{name} {done}/{total}" if total else f"{name} {done}"

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._bar is None or self._train is None:
            return
        done, total, unit = self._steps(trainer)
        now = time.monotonic()
        if now - self._shown_at < self.refresh_s and (total is None or done < total):
            self._bar.update(self._train, completed=done)
            return
        self._shown_at = now  # reading the losses waits for the device: not every step
        metrics = self.get_metrics(trainer, pl_module)
        losses = _values(metrics, sorted(k for k in metrics if k.startswith("train/")))
        description = self._describe(done, total, unit)
        self._bar.update(self._train, completed=done, description=description, losses=losses)
        tenth = int(10 * done / total) if total else self._logged_tenth
        if not self.console.is_terminal and tenth > self._logged_tenth:
            self._logged_tenth = tenth
            task = self._bar.tasks[self._train]
            remaining = "-" if task.time_remaining is None else f"{task.time_remaining:.0f} s"
            line = f"{description} · {task.elapsed:.0f} s · ETA {remaining} · {losses}"
            self.console.print(line, soft_wrap=True)

    def on_train_end(self, trainer, pl_module) -> None:
        if self._bar is not None:
            self._bar.stop()
        self._bar = self._train = None

    def _eval_start(self, trainer, what: str, total: float) -> None:
        if not self.is_enabled or trainer.sanity_checking:
            return
        if self._bar is None:  # trainer.validate / trainer.test: a bar of its own
            if not self.console.is_terminal:
                return  # a transient bar leaves nothing useful in a log
            self._bar = self._start(transient=True)
        total = None if math.isinf(total) else total
        self._eval = self._bar.add_task(what, total=total, losses="", unit="batches")

    def _eval_advance(self) -> None:
        if self._bar is not None and self._eval is not None:
            self._bar.advance(self._eval)

    def _eval_end(self, trainer) -> None:
        if self._bar is None or self._eval is None:
            return
        self._bar.remove_task(self._eval)
        self._eval = None
        if self._train is None:  # not inside fit
            self._bar.stop()
            self._bar = None

    def on_validation_start(self, trainer, pl_module) -> None:
        self._eval_start(trainer, "validating", self.total_val_batches)

    def on_validation_batch_end(
        self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0
    ) -> None:
        self._eval_advance()

    def on_validation_end(self, trainer, pl_module) -> None:
        inside_fit = self._train is not None
        self._eval_end(trainer)
        if inside_fit and not trainer.sanity_checking and self.is_enabled:
            line = validation_line(trainer.global_step, trainer.callback_metrics)
            self.console.print(line, soft_wrap=True)  # one line, whatever the width

    def on_test_start(self, trainer, pl_module) -> None:
        self._eval_start(trainer, "testing", sum(trainer.num_test_batches))

    def on_test_batch_end(
        self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0
    ) -> None:
        self._eval_advance()

    def on_test_end(self, trainer, pl_module) -> None:
        self._eval_end(trainer)


class ImagesPerSecond(progress.ProgressColumn):
    """A progress bar column: throughput in images/s (or the task's ``unit`` field: frames)."""

    def render(self, task: progress.Task) -> Text:
        # Rich's speed needs two updates; a task finished in one shows its mean rate instead.
        speed = task.speed
        if speed is None and task.completed and task.elapsed:
            speed = task.completed / task.elapsed
        rate = "-" if speed is None else f"{speed:.1f}"
        return Text(f"{rate} {task.fields.get('unit', 'images')}/s")


def image_progress(console: Console) -> progress.Progress:
    """A progress bar over images (or video frames): bar, done/total, elapsed and remaining
    time, images/s."""
    columns = (progress.MofNCompleteColumn(), progress.TimeElapsedColumn(),
               progress.TimeRemainingColumn(), ImagesPerSecond())  # fmt: skip
    return progress.Progress(
        *progress.Progress.get_default_columns()[:2], *columns, console=console
    )
