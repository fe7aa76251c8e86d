"""Checkpoints that never stall training: written in the background, saved when a job is
stopped (SIGTERM, submitit's pre-emption signal) as well as on a wall-clock interval."""

from __future__ import annotations

import contextlib
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
_NOT_DUE, _INTERVAL, _URGENT = 0, 1, 2


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
    points), after every validation within fit, at the end of training, at SIGTERM and, in a
    job started by submitit, at its pre-emption/time-out signal, which submitit would
    otherwise act on in the middle of a step: here it only marks the run, the state is saved
    at the next batch boundary and only then is submitit's handler (requeue, exit) called.
    Saves made because the job is stopping wait for the file to be on disk; the others are
    written in the background (``BackgroundCheckpointIO``). One file, replaced in place
    (``ModelCheckpoint`` keeps the best, weights only: its ``save_last`` rewrites "last" only
    with a new best). A ``Checkpoint`` so that Lightning runs it after the other callbacks
    of a hook, at the state they leave. ``ckpt_path=last`` resumes from it.
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
        self._submitit_handler: tuple[int, Any] | None = None
        self._preempted = False

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
        self._catch_preemption()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        due = self._due(trainer)
        if trainer.world_size > 1:
            due = _highest_over_processes(trainer, due)
        if due != _NOT_DUE:
            self._save(trainer, stopping=due == _URGENT)
        if self._preempted:
            self._hand_over(self._submitit_handler)

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.state.fn == "fit" and not trainer.sanity_checking:
            self._save(trainer)

    def on_train_end(self, trainer, pl_module) -> None:
        self._save(trainer, stopping=self._preempted)
        submitit = self._release_preemption()  # from here on submitit acts on its signal at once
        if self._preempted:
            self._hand_over(submitit)

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        self._release_preemption()
        if self._preempted:  # a failing run is not requeued: it would fail again
            self._preempted = False
            log.warning("the pre-emption signal came as training stopped on an error")
        if not isinstance(exception, SIGTERMException) or trainer.state.fn != "fit":
            return
        if trainer.sanity_checking:
            return
        try:
            self._save(trainer, stopping=True)  # unless saved at this step already
        except Exception as error:  # the process is exiting anyway: say why nothing was kept
            log.error("the job is being stopped, but %s was not saved: %s", self.path, error)

    def teardown(self, trainer, pl_module, stage: str) -> None:
        self._release_preemption()

    def _due(self, trainer: L.Trainer) -> int:
        due = _NOT_DUE
        if self.every_n_train_steps is not None:
            # Crossing a multiple counts, not hitting it: the GAN's steps advance by two.
            index = trainer.global_step // self.every_n_train_steps
            if index > self._interval_index:
                self._interval_index = index
                due = _INTERVAL
        minutes = self.every_n_minutes
        if minutes is not None and time.monotonic() - self._last_save >= 60 * minutes:
            due = _INTERVAL
        if trainer.received_sigterm or self._preempted:
            due = _URGENT
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

    def _catch_preemption(self) -> None:
        if not os.environ.get("SUBMITIT_EXECUTOR") or self._submitit_handler is not None:
            return
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers belong to the main thread
        import submitit  # only jobs that submitit started get here

        signum = submitit.JobEnvironment._usr_sig()
        handler = signal.getsignal(signum)
        if callable(handler):
            self._submitit_handler = (signum, handler)
            signal.signal(signum, self._on_preemption_signal)

    def _on_preemption_signal(self, signum: int, frame: FrameType | None) -> None:
        self._preempted = True  # acted on at the next batch boundary, not inside a step

    def _hand_over(self, submitit: tuple[int, Any] | None) -> None:
        self._preempted = False
        if submitit is not None:
            signum, handler = submitit
            handler(signum, None)  # requeues the job and exits (in rank 0; returns in others)

    def _release_preemption(self) -> tuple[int, Any] | None:
        submitit, self._submitit_handler = self._submitit_handler, None
        if submitit is not None:
            signal.signal(*submitit)
        return submitit


def _highest_over_processes(trainer: L.Trainer, due: int) -> int:
    # One small all-reduce per batch, as Lightning's own SIGTERM broadcast: the checkpoint is
    # built collectively, so all processes must decide alike.
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return due
    flag = torch.tensor([due], device=trainer.strategy.root_device)
    torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
    return int(flag.item())
