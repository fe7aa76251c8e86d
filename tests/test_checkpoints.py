"""Checkpoints never stall training: written off the training thread, complete when a run
ends, never a good file replaced by a broken one, and saved when a job is told to stop."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import lightning as L
import pytest
import torch

from colorizer.checkpoints import BackgroundCheckpointIO, LastCheckpoint
from colorizer.errors import CheckpointWriteError, ConfigError
from colorizer.run import train
from tests.helpers import QUICK, SMALL_MODELS, assert_one_line_error

REPO = Path(__file__).resolve().parents[1]
PROBE = "+callbacks.probe._target_=tests.test_checkpoints.WriteProbe"


class WriteProbe(L.Callback):
    """Keeps a run's checkpoint plugin (its record of writes), the name of the training
    thread, and the step of every full checkpoint (callbacks' ``on_save_checkpoint`` runs for
    ``last.ckpt``, not for the weights-only best)."""

    runs: list[WriteProbe] = []

    def __init__(self) -> None:
        self.checkpoint_io = None
        self.training_thread = ""
        self.steps: list[int] = []
        self.batches: list[int] = []  # the stream's position at each save
        self.validations: list[int] = []  # the step of each validation within fit
        WriteProbe.runs.append(self)

    def on_train_start(self, trainer, pl_module) -> None:
        self.checkpoint_io = trainer.strategy.checkpoint_io
        self.training_thread = threading.current_thread().name

    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        self.steps.append(trainer.global_step)
        self.batches.append(trainer.datamodule.batches_trained)

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.state.fn == "fit" and not trainer.sanity_checking:
            self.validations.append(trainer.global_step)


class SignalAt(L.Callback):
    """Sends this process ``signum`` as training batch ``batch`` starts, in a run that did
    not resume."""

    def __init__(self, batch: int, signum: int = int(signal.SIGTERM)) -> None:
        self.batch, self.signum = batch, signum

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.datamodule.batches_trained == self.batch and trainer.ckpt_path is None:
            os.kill(os.getpid(), self.signum)


class Unpicklable:
    def __reduce__(self):
        raise TypeError("this object cannot be pickled")


class PoisonFrom(L.Callback):
    """From optimizer step ``step`` on, puts an object that cannot be pickled into every full
    checkpoint, as a broken callback state would; first records the digest of the
    ``last.ckpt`` then on disk (``before-poison.sha256``)."""

    def __init__(self, step: int, dirpath: str) -> None:
        self.step, self.dirpath = step, Path(dirpath)
        self._trainer: L.Trainer | None = None

    def setup(self, trainer, pl_module, stage) -> None:
        self._trainer = trainer

    def state_dict(self) -> dict:
        trainer = self._trainer
        if trainer is None or trainer.global_step < self.step:
            return {}
        digest = self.dirpath / "before-poison.sha256"
        if not digest.exists():
            trainer.strategy.checkpoint_io.wait()  # the previous last.ckpt, complete
            digest.write_text(_sha256(self.dirpath / "last.ckpt"))
        return {"poison": Unpicklable()}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _last_run_probe() -> WriteProbe:
    probe = WriteProbe.runs.pop()
    WriteProbe.runs.clear()
    return probe


def test_a_run_writes_every_checkpoint_off_the_training_thread(make_cfg, tmp_path):
    # One validation, at the end: the best is the final state, then linked to last.ckpt.
    summary = train(make_cfg(*SMALL_MODELS["alpha"], *QUICK, "trainer.val_check_interval=4", PROBE))
    probe = _last_run_probe()
    assert isinstance(probe.checkpoint_io, BackgroundCheckpointIO)
    assert probe.training_thread == threading.main_thread().name
    writes = probe.checkpoint_io.writes
    folder = tmp_path / "run" / "checkpoints"
    assert [Path(write.path).name for write in writes] == ["best-step4.ckpt", "last.ckpt"]
    assert all(write.thread != probe.training_thread for write in writes), writes
    # Complete when train() returned: its validation and test read the best back, and
    # store_final_state_once found both files whole (the same step: one file, two names).
    assert summary["global_step"] == 4 and summary["best_checkpoint"] == str(writes[0].path)
    assert os.path.samefile(folder / "best-step4.ckpt", folder / "last.ckpt")
    assert (folder / "last.ckpt").stat().st_size == writes[1].bytes
    last = torch.load(folder / "last.ckpt", weights_only=True)
    assert last["global_step"] == 4 and last["optimizer_states"] and last["callbacks"]
    assert sorted(path.name for path in folder.iterdir()) == ["best-step4.ckpt", "last.ckpt"]


def test_the_file_holds_the_state_at_the_save_not_what_training_did_next(tmp_path):
    plugin, weights = BackgroundCheckpointIO(), torch.zeros(1 << 20)
    plugin.save_checkpoint({"weights": weights}, tmp_path / "last.ckpt")
    weights += 1  # the next optimizer step, while the file may still be being written
    plugin.teardown()
    saved = torch.load(tmp_path / "last.ckpt", weights_only=True)["weights"]
    assert saved.eq(0).all()
    (write,) = plugin.writes
    assert write.thread != threading.current_thread().name and write.bytes > 4 << 20


def test_a_failed_write_keeps_the_previous_file_and_is_raised(tmp_path):
    plugin, target = BackgroundCheckpointIO(), tmp_path / "last.ckpt"
    plugin.save_checkpoint({"step": 1, "weights": torch.ones(3)}, target)
    plugin.wait()
    good = target.read_bytes()
    expected = (
        f"could not write the checkpoint {target} (TypeError: this object cannot be "
        "pickled); the file there, if any, is unchanged"
    )
    # Raised by the first save after the failed write finished (which then writes nothing)...
    plugin.save_checkpoint({"step": 2, "poison": Unpicklable()}, target)
    plugin.wait(raise_error=False)  # finished, the error kept for the next call
    with pytest.raises(CheckpointWriteError) as caught:
        plugin.save_checkpoint({"step": 3}, target)
    assert str(caught.value) == expected
    assert target.read_bytes() == good
    assert [path.name for path in tmp_path.iterdir()] == ["last.ckpt"]  # no temporary file
    # ... or at teardown, the end of fit.
    plugin.save_checkpoint({"step": 4, "poison": Unpicklable()}, target)
    with pytest.raises(CheckpointWriteError, match="could not write the checkpoint"):
        plugin.teardown()
    assert target.read_bytes() == good
    assert [path.name for path in tmp_path.iterdir()] == ["last.ckpt"]
    assert [write.path for write in plugin.writes] == [str(target)]  # only the good one


def test_a_failed_write_in_a_run_stops_it_with_one_line(main_of, tmp_path):
    result = main_of(
        "colorizer.run", *SMALL_MODELS["alpha"], *QUICK, "callbacks.last.every_n_train_steps=1",
        "+callbacks.poison._target_=tests.test_checkpoints.PoisonFrom", "+callbacks.poison.step=3",
        "+callbacks.poison.dirpath=${paths.output_dir}/checkpoints", "hydra.run.dir=run",
    )  # fmt: skip
    folder = tmp_path / "run" / "checkpoints"
    assert_one_line_error(
        result,
        f"could not write the checkpoint {folder.resolve() / 'last.ckpt'} (TypeError: this "
        "object cannot be pickled); the file there, if any, is unchanged",
    )
    # The step-3 write failed; the step-2 file is still there, byte for byte.
    assert _sha256(folder / "last.ckpt") == (folder / "before-poison.sha256").read_text()
    assert torch.load(folder / "last.ckpt", weights_only=True)["global_step"] == 2
    assert not [path for path in folder.iterdir() if path.name.startswith(".")]
    assert not (tmp_path / "run" / "metrics.json").exists()


@pytest.mark.parametrize(
    ("settings", "steps"),
    [
        # A tiny interval: a save at every batch boundary, and after the validations at 2
        # and 4 another (the state a validation leaves: best score, the resume point).
        (["callbacks.last.every_n_minutes=1e-6"], [1, 2, 2, 3, 4, 4]),
        # No interval: at the validation (step 3) and at the end of training (4).
        (
            ["callbacks.last.every_n_minutes=null", "trainer.val_check_interval=3"]
            + ["callbacks.validate_the_end=null"],
            [3, 4],
        ),
    ],
    ids=["every-60-microseconds", "no-interval"],
)
def test_last_checkpoint_saves_on_its_wall_clock_interval(make_cfg, tmp_path, settings, steps):
    train(make_cfg(*SMALL_MODELS["alpha"], *QUICK, *settings, PROBE))
    probe = _last_run_probe()
    assert probe.steps == steps
    written = [w for w in probe.checkpoint_io.writes if Path(w.path).name == "last.ckpt"]
    assert len(written) == len(steps)
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["global_step"] == 4


@pytest.mark.parametrize("minutes", [0, -1.0, "soon", True])
def test_every_n_minutes_must_be_a_positive_number(minutes):
    with pytest.raises(ConfigError, match=r"callbacks.last.every_n_minutes=.* must be a number"):
        LastCheckpoint("unused", every_n_minutes=minutes)


@pytest.mark.slow
def test_sigterm_saves_the_step_training_stopped_at(make_cfg, tmp_path):
    run = tmp_path / "run"
    overrides = [
        *SMALL_MODELS["alpha"], "data=synthetic", "data.num_train=4096", "data.batch_size=4",
        "data.image_size=32", "logger=none", "trainer.accelerator=cpu",
        "trainer.val_check_interval=1000", "callbacks.last.every_n_train_steps=5",
    ]  # fmt: skip
    probe = ["+callbacks.steps._target_=tests.helpers.StepFile",
             "+callbacks.steps.dirpath=${paths.output_dir}"]  # fmt: skip
    command = [sys.executable, "-m", "colorizer.run", *overrides, *probe,
               "trainer.max_steps=100000", f"hydra.run.dir={run}"]  # fmt: skip
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(REPO)}  # for tests.helpers
    env.pop("HYDRA_FULL_ERROR", None)
    with (tmp_path / "stderr.txt").open("w") as stderr:
        process = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                                   stderr=stderr)  # fmt: skip
    try:
        deadline, signalled_at = time.monotonic() + 300, None
        while time.monotonic() < deadline and process.poll() is None:
            step = (run / "step").read_text() if (run / "step").is_file() else "0"
            if int(step) >= 12:  # past the interval saves at steps 5 and 10
                process.send_signal(signal.SIGTERM)
                signalled_at = int(step)
                break
            time.sleep(0.05)
        assert signalled_at is not None, (tmp_path / "stderr.txt").read_text()[-3000:]
        assert process.wait(timeout=120) == 128 + signal.SIGTERM  # not taken for a finished job
    finally:
        if process.poll() is None:
            process.kill()
    last = run / "checkpoints" / "last.ckpt"
    state = torch.load(last, weights_only=True)
    stopped_at = int((run / "step").read_text())  # the last batch it finished
    assert signalled_at <= state["global_step"] == stopped_at, (signalled_at, stopped_at)
    log = (run / "run.log").read_text()
    assert f"the job is being stopped: saved {last.resolve()} at step {stopped_at}" in log
    stderr = (tmp_path / "stderr.txt").read_text()
    assert f"warning: stopped by SIGTERM at step {stopped_at}" in stderr
    assert "Traceback" not in stderr
    assert not (run / "metrics.json").exists()
    assert not [path for path in last.parent.iterdir() if path.name.startswith(".")]
    # A checkpoint Lightning resumes from: two more steps.
    resumed = train(make_cfg(*overrides, f"trainer.max_steps={stopped_at + 2}", "ckpt_path=last"))
    assert resumed["global_step"] == stopped_at + 2


def test_sigterm_before_a_validation_lets_it_run_and_resuming_repeats_nothing(make_cfg, tmp_path):
    """SIGTERM as batch 4 starts, with a validation due after batch 4: the batch trains, its
    validation runs, then the run stops (exit 143) with that state saved; resumed, it does
    not validate step 4 again (nor skip it) and ends with the uninterrupted run's weights."""
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signals reach only the main thread")
    args = [*SMALL_MODELS["alpha"], *QUICK, "data.num_train=8", "data.batch_size=2",
            "data.image_size=16", "trainer.max_steps=6", "trainer.val_check_interval=2",
            "trainer.deterministic=true", PROBE]  # fmt: skip
    train(make_cfg(*args))
    assert _last_run_probe().validations == [2, 4, 6]
    (tmp_path / "run").rename(tmp_path / "whole")
    stop = ["+callbacks.stop._target_=tests.test_checkpoints.SignalAt", "+callbacks.stop.batch=4"]
    with pytest.raises(SystemExit) as stopped:
        train(make_cfg(*args, *stop))
    assert stopped.value.code == 128 + signal.SIGTERM
    assert _last_run_probe().validations == [2, 4]
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    state = torch.load(last, weights_only=True)
    assert state["global_step"] == 4 and state["SyntheticDataModule"]["batches_trained"] == 4
    train(make_cfg(*args, "ckpt_path=last"))
    assert _last_run_probe().validations == [6]
    weights = [torch.load(folder / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
               for folder in (tmp_path / "whole", tmp_path / "run")]  # fmt: skip
    for name, value in weights[0].items():
        assert torch.equal(weights[1][name], value), name


def test_with_gradient_accumulation_saves_wait_for_the_end_of_a_window(make_cfg):
    """The gradients summed inside a window are in no checkpoint: a save inside one could not
    be resumed exactly, so even a save due at every batch waits for the window's end."""
    train(make_cfg(*SMALL_MODELS["alpha"], *QUICK, "callbacks.last.every_n_minutes=1e-6",
                   "+trainer.accumulate_grad_batches=2", "trainer.max_steps=3",
                   "trainer.val_check_interval=1000", PROBE))  # fmt: skip
    batches = _last_run_probe().batches
    assert batches and all(batch % 2 == 0 for batch in batches), batches
