"""Checkpoints that never stall training: written in the background, saved when a job is
stopped (SIGTERM, submitit's pre-emption signal) as well as on a wall-clock interval."""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import signal
import sys
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import lightning as L
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.callbacks import Checkpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException
from lightning_utilities.core.apply_func import apply_to_collection

from colorizer.errors import CheckpointWriteError, ConfigError, require_int

log = logging.getLogger(__name__)

# How due a save is at a batch boundary; under DDP the processes agree on the highest.
_NOT_DUE, _INTERVAL, _SIGTERM, _PREEMPTION = 0, 1, 2, 3


@dataclass(frozen=True)
class CheckpointWrite:
    """One finished write: what the tests (and a curious user) can check about it."""

    path: str
    thread: str  # the name of the thread that wrote it
    seconds: float
    bytes: int


class BackgroundCheckpointIO(TorchCheckpointIO):
    """Writes checkpoints on a thread of their own, so that the GPU keeps training meanwhile.

    The training thread only copies the tensors to host memory (a point-in-time snapshot the
    optimizer can no longer change); the writer streams it into a temporary file beside the
    target, syncs it to disk and renames it over the target, so a failed or interrupted write
    never replaces a good file (and a hard link to the old file, see ``store_final_state_once``,
    keeps its content). At most ``max_pending`` snapshots wait or are being written (2: the
    best and ``last.ckpt`` that a validation saves one after the other); one more save first
    waits for the oldest. A failed write is raised, as ``CheckpointWriteError``, by the first
    save, load or removal after it finished, or at ``teardown`` (the end of fit, validate or
    test). ``writes`` records every finished write.
    """

    def __init__(self, max_pending: int = 2) -> None:
        super().__init__()
        self.max_pending = require_int("max_pending", max_pending)
        self.writes: list[CheckpointWrite] = []
        self._executor: ThreadPoolExecutor | None = None
        self._pending: deque[tuple[Path, Future[None]]] = deque()
        self._error: BaseException | None = None

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None
    ) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        # Finished writes are collected (a failure is raised now, and nothing more written);
        # the oldest is waited for only when the queue is full.
        while self._pending and (
            self._pending[0][1].done() or len(self._pending) >= self.max_pending
        ):
            self._finish(self._pending.popleft()[1])
        self._raise_error()
        snapshot = apply_to_collection(checkpoint, torch.Tensor, _host_copy)
        if self._executor is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="checkpoint-writer")
        path = Path(path)
        self._pending.append((path, self._executor.submit(self._write, snapshot, path)))

    def load_checkpoint(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        self.wait()  # the file may be one being written
        return super().load_checkpoint(*args, **kwargs)

    def remove_checkpoint(self, path: _PATH) -> None:
        for entry in [entry for entry in self._pending if entry[0] == Path(path)]:
            self._pending.remove(entry)  # only writes of this file matter
            self._finish(entry[1])
        self._raise_error()
        super().remove_checkpoint(path)

    def wait(self, raise_error: bool = True) -> None:
        """Returns once every write in flight is on disk; raises a failed write's error once
        (kept for later when ``raise_error`` is false)."""
        while self._pending:
            self._finish(self._pending.popleft()[1])
        if raise_error:
            self._raise_error()

    def _finish(self, write: Future[None]) -> None:
        error = write.exception()  # waits for it
        if error is not None and self._error is None:
            self._error = error

    def _raise_error(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def teardown(self) -> None:
        self.wait(raise_error=False)
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
        error, self._error = self._error, None
        if error is None:
            return
        stopping_for = sys.exc_info()[1]
        if isinstance(stopping_for, CheckpointWriteError):
            return  # a later write failing like the one already reported
        if stopping_for is not None:  # stopping for another error: log this one, not hide it
            log.error("%s", error)
            return
        raise error

    def _write(self, checkpoint: dict[str, Any], path: Path) -> None:
        start = time.perf_counter()
        temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # never matches *.ckpt
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(temporary, "wb") as file:
                torch.save(checkpoint, file)
                file.flush()
                os.fsync(file.fileno())
                size = file.tell()
            os.replace(temporary, path)
        except Exception as error:
            with contextlib.suppress(OSError):
                temporary.unlink(missing_ok=True)
            cause = error.strerror if isinstance(error, OSError) and error.strerror else None
            raise CheckpointWriteError(
                f"could not write the checkpoint {path} "
                f"({cause or f'{type(error).__name__}: {error}'}); the file there, if any, "
                "is unchanged"
            ) from error
        _sync_directory(path.parent)  # the rename itself survives a crash
        seconds = time.perf_counter() - start
        self.writes.append(
            CheckpointWrite(str(path), threading.current_thread().name, seconds, size)
        )
        log.debug("wrote %s (%.1f MB) in %.2f s", path, size / 1e6, seconds)


def _host_copy(tensor: torch.Tensor) -> torch.Tensor:
    # A real copy even of a CPU tensor: training goes on changing the original in place.
    return tensor.detach().to("cpu", copy=True)


def _sync_directory(folder: Path) -> None:
    with contextlib.suppress(OSError):  # some file systems cannot open or sync a directory
        descriptor = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)


class LastCheckpoint(Checkpoint):
    """``last.ckpt``: the whole training state, saved often enough that a stopped run loses
    little, and at the moment a job is told to stop.

    Saved every ``every_n_minutes`` of wall-clock time (a cost that does not grow with the
    model's speed) and/or every ``every_n_train_steps`` optimizer steps (deterministic save
    points), after every validation within fit, and at the end of training; written in the
    background (``BackgroundCheckpointIO``). One file, replaced in place (``ModelCheckpoint``
    keeps the best, weights only: its ``save_last`` rewrites "last" only with a new best).

    Stop signals, SIGTERM and, in a job started by submitit, its pre-emption/time-out signal,
    are only noted when they arrive (Lightning would abort a validation under way, submitit
    would exit in the middle of a step). At the next batch boundary the processes agree to
    stop, the state is saved and waited for, a validation due after that batch runs first
    and is saved too (a checkpoint taken between a batch and its validation would skip that
    validation on resume), and only then does the run stop: submitit's handler requeues the
    job, and training ends with Lightning's ``SIGTERMException`` (``colorizer.run`` exits
    143). With gradient accumulation, saves wait for the end of the accumulation window
    (the gradients summed so far are in no checkpoint). A ``Checkpoint`` so that Lightning
    runs it after the other callbacks of a hook, at the state they leave. ``ckpt_path=last``
    resumes from it.
    """

    def __init__(
        self,
        dirpath: str,
        every_n_minutes: float | None = 10.0,
        every_n_train_steps: int | None = None,
        filename: str = "last",
    ) -> None:
        if every_n_train_steps is not None:
            require_int("callbacks.last.every_n_train_steps", every_n_train_steps)
        if every_n_minutes is not None and (
            isinstance(every_n_minutes, bool)
            or not isinstance(every_n_minutes, int | float)
            or not every_n_minutes > 0
        ):
            raise ConfigError(
                f"callbacks.last.every_n_minutes={every_n_minutes!r} must be a number > 0, "
                "or null (no time-based saves)"
            )
        self.path = Path(dirpath) / f"{filename}.ckpt"
        self.every_n_minutes = every_n_minutes
        self.every_n_train_steps = every_n_train_steps
        self._saved_at = -1
        self._stop_announced = -1
        self._interval_index = 0
        self._last_save = time.monotonic()
        self._checkpoint_io: Any = None
        self._handlers: dict[int, Any] = {}  # signal -> the handler it had before ours
        self._requested = _NOT_DUE  # the stop a signal asked for (_SIGTERM or _PREEMPTION)
        self._stopping = _NOT_DUE  # the stop all processes agreed on, acted on next boundary

    @property
    def last_model_path(self) -> str:
        # A path given out names a complete file, not one still being written.
        self._wait(raise_error=False)
        return str(self.path) if self.path.is_file() else ""

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._checkpoint_io = trainer.strategy.checkpoint_io

    def on_train_start(self, trainer, pl_module) -> None:
        self._last_save = time.monotonic()
        if self.every_n_train_steps is not None:
            self._interval_index = trainer.global_step // self.every_n_train_steps
        self._catch_signals()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        due = self._due(trainer, mid_window=_accumulating(trainer, batch_idx))
        if trainer.world_size > 1:
            due = _highest_over_processes(trainer, due)
        if due != _NOT_DUE:
            self._stopping = due if due >= _SIGTERM else _NOT_DUE
            self._save(trainer, stopping=bool(self._stopping))

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self._stopping:  # saved at the last boundary, its validation (if any) included
            self._stop(trainer)

    def on_validation_start(self, trainer, pl_module) -> None:
        if trainer.state.fn == "fit" and not trainer.sanity_checking:
            self._saved_at = -1  # the state after this validation is a new one to save

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.state.fn != "fit" or trainer.sanity_checking:
            return
        batch_idx = trainer.fit_loop.epoch_loop.batch_idx
        if _accumulating(trainer, batch_idx) and not self._stopping:
            return  # inside an accumulation window: the next boundary saves
        self._save(trainer, stopping=bool(self._stopping))

    def on_train_end(self, trainer, pl_module) -> None:
        stop = self._requested
        if trainer.world_size > 1:
            stop = _highest_over_processes(trainer, stop)
        self._save(trainer, stopping=bool(stop))
        if stop:  # the job was told to stop: it does not go on to score the checkpoints
            self._stopping = stop
            self._stop(trainer)
        self._release_signals()

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        self._release_signals()
        if self._requested == _PREEMPTION and not isinstance(exception, SIGTERMException):
            log.warning("the pre-emption signal came as training stopped on an error")
        self._requested = self._stopping = _NOT_DUE
        if not isinstance(exception, SIGTERMException) or trainer.state.fn != "fit":
            return
        if trainer.sanity_checking:
            return
        try:
            self._save(trainer, stopping=True)  # unless saved at this step already
        except Exception as error:  # the process is exiting anyway: say why nothing was kept
            log.error("the job is being stopped, but %s was not saved: %s", self.path, error)

    def teardown(self, trainer, pl_module, stage: str) -> None:
        self._release_signals()

    def _due(self, trainer: L.Trainer, mid_window: bool = False) -> int:
        if trainer.received_sigterm:
            return _SIGTERM  # Lightning's own handler saw it: it stops after this batch
        if mid_window:
            return _NOT_DUE  # what is due is saved at the window's end
        due = self._requested
        if self.every_n_train_steps is not None:
            # Crossing a multiple counts, not hitting it: the GAN's steps advance by two.
            index = trainer.global_step // self.every_n_train_steps
            if index > self._interval_index:
                self._interval_index = index
                due = max(due, _INTERVAL)
        minutes = self.every_n_minutes
        if minutes is not None and time.monotonic() - self._last_save >= 60 * minutes:
            due = max(due, _INTERVAL)
        return due

    def _save(self, trainer: L.Trainer, stopping: bool = False) -> None:
        # Every process takes part (the random states are gathered); rank 0 writes.
        if self._saved_at != trainer.global_step:
            trainer.save_checkpoint(self.path, weights_only=False)
            self._saved_at = trainer.global_step
        self._last_save = time.monotonic()
        if stopping:  # the process may exit next: the file must be complete first
            self._wait()
            if trainer.is_global_zero and self._stop_announced != trainer.global_step:
                self._stop_announced = trainer.global_step
                log.info("the job is being stopped: saved %s at step %d", self.path,
                         trainer.global_step)  # fmt: skip

    def _wait(self, raise_error: bool = True) -> None:
        if isinstance(self._checkpoint_io, BackgroundCheckpointIO):
            self._checkpoint_io.wait(raise_error=raise_error)

    def _catch_signals(self) -> None:
        """Put a handler that only notes the stop in front of Lightning's (SIGTERM) and
        submitit's (pre-emption) own."""
        if self._handlers or threading.current_thread() is not threading.main_thread():
            return  # signal handlers belong to the main thread
        wanted = {signal.SIGTERM: _SIGTERM}
        if os.environ.get("SUBMITIT_EXECUTOR"):
            import submitit  # only jobs that submitit started get here

            wanted[submitit.JobEnvironment._usr_sig()] = _PREEMPTION
        for signum, stop in wanted.items():
            handler = signal.getsignal(signum)
            if callable(handler):
                self._handlers[signum] = handler
                signal.signal(signum, functools.partial(self._note_stop, stop))

    def _note_stop(self, stop: int, signum: int, frame: FrameType | None) -> None:
        self._requested = max(self._requested, stop)  # acted on at a batch boundary

    def _stop(self, trainer: L.Trainer) -> None:
        """End training for the agreed stop: submitit requeues a pre-empted job (and exits in
        process 0); then ``SIGTERMException``, Lightning's way out of a fit at a signal."""
        stop, self._stopping, self._requested = self._stopping, _NOT_DUE, _NOT_DUE
        handlers = self._release_signals()
        if stop == _PREEMPTION:
            for signum, handler in handlers.items():
                if signum != signal.SIGTERM:
                    handler(signum, None)
        raise SIGTERMException()

    def _release_signals(self) -> dict[int, Any]:
        handlers, self._handlers = self._handlers, {}
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
        return handlers


def _accumulating(trainer: L.Trainer, batch_idx: int) -> bool:
    """Whether batch ``batch_idx`` (of Lightning's epoch) ends inside a gradient-accumulation
    window, with gradients summed that no checkpoint holds."""
    return (batch_idx + 1) % trainer.accumulate_grad_batches != 0


def _highest_over_processes(trainer: L.Trainer, due: int) -> int:
    # One small all-reduce per batch, as Lightning's own SIGTERM broadcast: the checkpoint is
    # built collectively, so all processes must decide alike.
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return due
    flag = torch.tensor([due], device=trainer.strategy.root_device)
    torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
    return int(flag.item())
