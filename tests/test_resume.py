"""Resuming: ckpt_path=last continues a run exactly, also after a SIGKILL mid-epoch."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from colorizer.errors import ConfigError
from colorizer.models.alpha import AlphaColorizer
from colorizer.run import resume_from, train
from tests.helpers import assert_one_line_error

# Epoch-based, deterministic, with worker processes and device augmentation (flips), so
# the order, the crops and the flips must all be restored for the runs to agree.
EPOCHS = [
    "model=alpha", "model.optimizer=adam", "data=curated", "data.image_size=32",
    "data.batch_size=2", "data.num_workers=2", "logger=none", "trainer.accelerator=cpu",
    "trainer.deterministic=true", "trainer.max_steps=-1", "trainer.val_check_interval=1.0",
    "trainer.check_val_every_n_epoch=1", "trainer.num_sanity_val_steps=0",
]  # fmt: skip


def final_weights(run_dir) -> dict[str, torch.Tensor]:
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    return state["state_dict"]


@pytest.mark.parametrize("hints", [False, True])  # hints are drawn like the augmentation
def test_stopped_and_resumed_run_equals_an_uninterrupted_one(make_cfg, tmp_path, hints):
    args = [*EPOCHS, f"model.hints={hints}"]
    whole = train(make_cfg(*args, "trainer.max_epochs=2", "hydra.run.dir=unused"))
    whole_weights = final_weights(tmp_path / "run")
    (tmp_path / "run").rename(tmp_path / "whole")

    first = train(make_cfg(*args, "trainer.max_epochs=1"))
    assert first["global_step"] == whole["global_step"] // 2
    resumed = train(make_cfg(*args, "trainer.max_epochs=2", "ckpt_path=last"))
    assert resumed["global_step"] == whole["global_step"]
    for key in ("val/psnr", "val/loss", "test/psnr", "test/mse", "test/cf"):
        assert resumed[key] == pytest.approx(whole[key], rel=1e-6, abs=1e-7), key
    for name, weights in final_weights(tmp_path / "run").items():
        assert torch.equal(weights, whole_weights[name]), name


def test_a_run_extended_by_an_epoch_ends_bit_identical_to_one_run_straight(make_cfg, tmp_path):
    """Counted in epochs but validated on the step schedule (every 100 steps): the first run's
    end is validated because it is the end (ValidateTheEnd), which Lightning's own schedule
    does not know about. Extending it must neither replay nor add a batch, and validating,
    testing and sample grids must not draw on training's randomness: the weights of the
    extended run and of the straight run are equal to the bit."""
    steps = [
        name for name in EPOCHS if not any(w in name for w in ("val_check", "check_val", "sanity"))
    ]
    args = [*steps, "seed=3"]  # validated every 100 steps, sanity check included
    straight = train(make_cfg(*args, "trainer.max_epochs=2"))
    (tmp_path / "run").rename(tmp_path / "straight")
    train(make_cfg(*args, "trainer.max_epochs=1"))
    extended = train(make_cfg(*args, "trainer.max_epochs=2", "ckpt_path=last"))
    assert extended["global_step"] == straight["global_step"] == 8  # 2 epochs of 4 batches
    weights_of = {run: final_weights(tmp_path / run) for run in ("straight", "run")}
    for name, weights in weights_of["straight"].items():
        assert torch.equal(weights_of["run"][name], weights), name


@pytest.mark.parametrize(
    "checkpoint",
    ["steps", "validation"],  # last.ckpt saved after a training batch; after a validation
)
def test_run_stopped_mid_epoch_resumes_with_the_batches_it_had_not_seen(
    make_cfg, tmp_path, checkpoint
):
    """4 batches an epoch (7 images, 2 a batch); stopped after step 5 (epoch 2, batch 1): the
    resumed run must train on batches 2 to 4 of epoch 2, as the uninterrupted run does, not
    on batches 1 to 3."""
    whole = train(make_cfg(*EPOCHS, "trainer.max_epochs=2"))
    assert whole["global_step"] == 8
    whole_weights = final_weights(tmp_path / "run")
    (tmp_path / "run").rename(tmp_path / "whole")

    # Saved every 5 steps; or at the validation of the end of the run (and not every 5 steps).
    every = 5 if checkpoint == "steps" else 1000
    stop = ["trainer.max_steps=5", f"callbacks.last.every_n_train_steps={every}"]
    if checkpoint == "steps":
        stop.append("callbacks.validate_the_end=null")
    train(make_cfg(*EPOCHS, "trainer.max_epochs=2", *stop))
    saved = tmp_path / "run" / "checkpoints" / "last.ckpt"
    assert torch.load(saved, weights_only=True)["global_step"] == 5
    resumed = train(make_cfg(*EPOCHS, "trainer.max_epochs=2", f"ckpt_path={saved}"))
    assert resumed["global_step"] == 8
    for name, weights in final_weights(tmp_path / "run").items():
        assert torch.equal(weights, whole_weights[name]), name
    for key in ("val/psnr", "test/psnr"):
        assert resumed[key] == pytest.approx(whole[key], rel=1e-6, abs=1e-7), key


def test_resume_needs_a_run_directory_with_checkpoints(make_cfg, main_of, tmp_path):
    with pytest.raises(ConfigError, match="holds no last\\*.ckpt: add hydra.run.dir=RUN_DIR"):
        train(make_cfg(*EPOCHS, "ckpt_path=last"))
    # auto: the same checkpoint as last when there is one, else a fresh start.
    model = AlphaColorizer()
    assert resume_from("auto", tmp_path / "run", model) is None
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    torch.save({"colorizer_model": "colorizer.models.alpha:AlphaColorizer"},
               tmp_path / "run" / "checkpoints" / "last.ckpt")  # fmt: skip
    found = resume_from("auto", tmp_path / "run", model)
    assert (
        found
        == resume_from("last", tmp_path / "run", model)
        == str(tmp_path / "run" / "checkpoints" / "last.ckpt")
    )
    result = main_of("colorizer.run", *EPOCHS, "ckpt_path=missing.ckpt")
    assert_one_line_error(result, "ckpt_path=missing.ckpt does not exist")


def test_requeued_job_prefers_its_own_checkpoint_to_the_one_it_started_from(tmp_path, monkeypatch):
    model, run = AlphaColorizer(), tmp_path / "run"
    start = tmp_path / "pretrained.ckpt"  # e.g. fine-tuning from another run
    torch.save({"colorizer_model": "colorizer.models.alpha:AlphaColorizer"}, start)
    monkeypatch.setenv("SUBMITIT_EXECUTOR", "slurm")
    assert resume_from(None, run, model) is None  # first start, nothing given: from scratch
    assert resume_from(str(start), run, model) == str(start)  # first start: as asked
    (run / "checkpoints").mkdir(parents=True)
    torch.save({"colorizer_model": "colorizer.models.alpha:AlphaColorizer"},
               run / "checkpoints" / "last.ckpt")  # fmt: skip
    own = str(run / "checkpoints" / "last.ckpt")
    assert resume_from(str(start), run, model) == own  # requeued: its own progress
    assert resume_from(None, run, model) == own
    monkeypatch.delenv("SUBMITIT_EXECUTOR")
    assert resume_from(str(start), run, model) == str(start)  # outside submitit: as asked


@pytest.mark.slow
def test_killed_run_resumes_from_its_last_checkpoint(make_cfg, tmp_path):
    """Killed mid-interval by SIGKILL (nothing saved at the kill), resumed from the newest
    periodic checkpoint: it repeats the steps after it and ends with the weights, to the bit,
    of a run that was never killed."""
    run = tmp_path / "run"
    overrides = [
        "model=alpha", "data=synthetic", "data.num_train=4096", "data.batch_size=4",
        "data.image_size=32", "logger=none", "trainer.accelerator=cpu",
        "trainer.deterministic=true", "trainer.val_check_interval=1000",
        "callbacks.last.every_n_train_steps=5",
    ]  # fmt: skip
    args = [sys.executable, "-m", "colorizer.run", *overrides, f"hydra.run.dir={run}"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    periodic = run / "checkpoints" / "last.ckpt"
    process = subprocess.Popen([*args, "trainer.max_steps=100000"], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and process.poll() is None:
            if periodic.is_file() and torch.load(periodic, weights_only=True)["global_step"] >= 10:
                break  # (Lightning replaces checkpoint files atomically: never half-written)
            time.sleep(0.2)
        assert process.poll() is None, "the run ended before it could be killed"
        process.send_signal(signal.SIGKILL)  # no chance to save anything more
        process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    killed_at = torch.load(periodic, weights_only=True)["global_step"]
    assert killed_at >= 10 and not (run / "metrics.json").exists()

    target = f"trainer.max_steps={killed_at + 20}"
    resumed = subprocess.run([*args, target, "ckpt_path=last"], env=env, capture_output=True,
                             text=True)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"Resuming from {periodic}" in resumed.stderr
    assert (
        f"Restoring states from the checkpoint path at {periodic}" in (run / "run.log").read_text()
    )
    summary = json.loads((run / "metrics.json").read_text())
    assert summary["global_step"] == killed_at + 20
    run.rename(tmp_path / "killed")
    straight = train(make_cfg(*overrides, target))  # in tmp_path / "run"
    assert straight["global_step"] == killed_at + 20
    weights = [final_weights(tmp_path / folder) for folder in ("killed", "run")]
    for name, value in weights[1].items():
        assert torch.equal(weights[0][name], value), name


def test_a_checkpoint_from_before_the_stream_resumes_after_its_batches(make_cfg, tmp_path, caplog):
    """Checkpoints written before the training stream hold no stream position: the run goes
    on after the batches Lightning counted (GAN pre-training epochs included), and says that
    its batches are not the interrupted run's."""
    args = ["model=alpha", "data=synthetic", "trainer=debug", "logger=none", "data.image_size=16",
            "trainer.accelerator=cpu"]  # fmt: skip
    train(make_cfg(*args))  # 4 steps
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    state = torch.load(last, weights_only=True)
    del state["SyntheticDataModule"]
    torch.save(state, last)
    resumed = train(make_cfg(*args, "trainer.max_steps=6", "ckpt_path=last"))
    assert resumed["global_step"] == 6
    assert "holds no training-stream position" in caplog.text
    assert "continuing after its 4 batches" in caplog.text
    state = torch.load(last, weights_only=True)
    assert state["SyntheticDataModule"]["batches_trained"] == 6
