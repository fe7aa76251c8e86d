"""The callbacks hook by hook, called as Lightning calls them on a stand-in trainer: the sample
grids' pixels and names, the throughput's arithmetic, when the end is validated, where a
divergence stops, and each process's random stream."""

from __future__ import annotations

import io
import logging
import random
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from colorizer import callbacks
from colorizer.callbacks import (
    NonFiniteGuard,
    RandomStates,
    SampleGrids,
    TrainingThroughput,
    ValidateTheEnd,
    data_wait_advice,
    triplet_grid,
)
from colorizer.errors import ConfigError, TrainingDiverged
from colorizer.models.alpha import AlphaColorizer
from colorizer.models.base import triplets


def stand_in(fn: str = "fit", **settings) -> SimpleNamespace:
    """The trainer attributes the callbacks read, for a single process."""
    defaults = {"state": SimpleNamespace(fn=fn), "sanity_checking": False, "global_step": 0,
                "is_global_zero": True, "loggers": [], "callbacks": []}  # fmt: skip
    return SimpleNamespace(**(defaults | settings))


def validation_batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """3 uint8 images ``[3, 3, 8, 8]`` and a prediction of them, sRGB in [0, 1]."""
    generator = torch.Generator().manual_seed(seed)
    batch = torch.randint(0, 256, (3, 3, 8, 8), dtype=torch.uint8, generator=generator)
    return batch, torch.rand(3, 3, 8, 8, generator=generator)


def test_a_sample_grid_shows_the_first_validation_batch_once_per_validation(tmp_path):
    samples = tmp_path / "run" / "samples"
    grids = SampleGrids(str(samples), num_images=2)
    batch, prediction = validation_batch()
    expected = triplet_grid(triplets(batch[:2], prediction[:2]))
    grids.on_validation_epoch_end(stand_in(global_step=0), None)  # no batch seen: no grid
    assert not samples.exists()

    trainer = stand_in(global_step=6)
    grids.on_validation_batch_end(trainer, None, prediction, batch, 0)
    grids.on_validation_batch_end(trainer, None, 1 - prediction, batch.flip(0), 1)  # not shown
    grids.on_validation_epoch_end(trainer, None)
    assert np.array_equal(np.asarray(Image.open(samples / "step_000006.png")), expected)

    # No grid from the sanity check, from trainer.validate (the best checkpoint scored after
    # fit), from a second dataloader, or from a process other than rank 0.
    for trainer, dataloader in (
        (stand_in(global_step=7, sanity_checking=True), 0),
        (stand_in("validate", global_step=8), 0),
        (stand_in(global_step=9), 1),
        (stand_in(global_step=10, is_global_zero=False), 0),
    ):
        grids.on_validation_batch_end(trainer, None, prediction, batch, 0, dataloader)
        grids.on_validation_epoch_end(trainer, None)
    assert sorted(path.name for path in samples.iterdir()) == ["step_000006.png"]

    grids.on_test_batch_end(stand_in("test"), None, prediction, batch, 0)
    grids.on_test_batch_end(stand_in("test"), None, 1 - prediction, batch, 1)  # not shown
    assert np.array_equal(np.asarray(Image.open(samples / "test.png")), expected)


class RecordingWandb(WandbLogger):
    """A W&B logger that keeps what it is asked to log instead of starting a run (W&B itself
    is tested in tests/test_loggers.py, reading back a whole offline run)."""

    def __init__(self) -> None:
        super().__init__(offline=True)
        self.logged: list[dict] = []

    def log_image(self, **logged) -> None:  # type: ignore[override]
        self.logged.append(logged)


def test_the_loggers_get_each_grid_as_its_pixels_under_its_stage_and_step(tmp_path):
    tensorboard = TensorBoardLogger(str(tmp_path / "tensorboard"), name="", version="")
    wandb = RecordingWandb()
    grids = SampleGrids(str(tmp_path / "samples"), num_images=3)
    batch, prediction = validation_batch()
    expected = triplet_grid(triplets(batch, prediction))
    loggers = [tensorboard, wandb]
    grids.on_validation_batch_end(stand_in(global_step=6, loggers=loggers), None, prediction,
                                  batch, 0)  # fmt: skip
    grids.on_validation_epoch_end(stand_in(global_step=6, loggers=loggers), None)
    grids.on_test_batch_end(stand_in("test", global_step=8, loggers=loggers), None, prediction,
                            batch, 0)  # fmt: skip

    caption = ["rows: gray | prediction | truth"]
    assert [(w["key"], w["step"], w["caption"]) for w in wandb.logged] == [
        ("samples/val", 6, caption), ("samples/test", 8, caption)
    ]  # fmt: skip
    for logged in wandb.logged:
        (image,) = logged["images"]
        assert np.array_equal(np.asarray(image), expected)
    tensorboard.experiment.flush()
    events = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"images": 0})
    events.Reload()
    for key, step in (("samples/val", 6), ("samples/test", 8)):
        (event,) = events.Images(key)
        assert event.step == step
        pixels = np.asarray(Image.open(io.BytesIO(event.encoded_image_string)))
        assert np.array_equal(pixels, expected), key


class Clock:
    """``time.perf_counter`` that a test moves on by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(callbacks.time, "perf_counter", clock)
    return clock


def test_throughput_counts_images_and_waits_after_the_warm_up_without_validation(clock, caplog):
    """Timed from the end of the warm-up's last batch to the next validation, and again from
    the first batch after it: uneven batches (images, seconds, of them waiting for data)."""
    throughput = TrainingThroughput(warmup_batches=2)
    loader = SimpleNamespace(wait_s=0.0)
    trainer = SimpleNamespace(train_dataloader=loader, datamodule=None)
    module = SimpleNamespace(device=torch.device("cpu"))

    def train(*batches: tuple[int, float, float]) -> None:
        for images, seconds, waited in batches:
            clock.now += seconds
            loader.wait_s += waited
            batch = torch.zeros(images, 3, 8, 8, dtype=torch.uint8)
            throughput.on_train_batch_end(trainer, module, None, batch, 0)

    def validate(after: float = 0.0) -> None:
        clock.now += after
        throughput.on_validation_start(trainer, module)
        clock.now += 3.0

    train((4, 0.5, 0.1), (4, 0.5, 0.1))  # the warm-up: timed from the end of its last batch
    assert (throughput.images_per_s, throughput.data_wait_fraction) == (None, None)
    train((4, 0.5, 0.1), (2, 1.0, 0.1))  # 6 images in 1.5 s
    validate()
    train((4, 0.5, 0.1))  # starts a segment that ends at once:
    validate(after=0.2)  # 0.2 s timed, but no image: nothing to count
    train((4, 0.5, 0.1), (4, 0.4, 0.1), (2, 0.6, 0.1))  # 6 images in 1 s
    validate()
    train((4, 0.5, 0.1), (1, 1.0, 0.2))  # 1 image in 1 s
    validate()  # the end is validated, then training ends: nothing more to time
    throughput.on_train_end(trainer, module)
    assert throughput.images_per_s == pytest.approx(13 / 3.5)
    assert throughput.data_wait_fraction == pytest.approx(0.6 / 3.5)
    assert "waited for data" not in caplog.text


def test_a_loader_without_a_clock_counts_no_waiting(clock):
    throughput = TrainingThroughput(warmup_batches=1)
    trainer = SimpleNamespace(train_dataloader=[], datamodule=None)  # a plain loader
    module = SimpleNamespace(device=torch.device("cpu"))
    for _ in range(3):
        clock.now += 0.5
        throughput.on_train_batch_end(trainer, module, None, torch.zeros(2, 3, 4, 4), 0)
    throughput.on_train_end(trainer, module)
    assert (throughput.images_per_s, throughput.data_wait_fraction) == (4.0, 0.0)


def test_throughput_says_once_that_training_waits_for_data_above_the_limit(clock, caplog):
    """Segments of 2 s (the batch that starts each is not in it) waiting a quarter (the
    limit: no warning), a half (one warning, with the advice for this datamodule) and three
    quarters of the time (no second warning)."""
    throughput = TrainingThroughput(warmup_batches=1, warn_data_wait=0.25)
    datamodule = SimpleNamespace(num_workers=0, memory_cache_mb=256, resized_cache="cache")
    loader = SimpleNamespace(wait_s=0.0)
    trainer = SimpleNamespace(train_dataloader=loader, datamodule=datamodule)
    module = SimpleNamespace(device=torch.device("cpu"))
    caplog.set_level(logging.WARNING, logger="colorizer.callbacks")
    for share in (0.25, 0.5, 0.75):
        for _ in range(3):
            clock.now += 1.0
            loader.wait_s += share
            throughput.on_train_batch_end(trainer, module, None, torch.zeros(2, 3, 4, 4), 0)
        throughput.on_validation_start(trainer, module)
    warnings = [r.getMessage() for r in caplog.records if "waited for data" in r.getMessage()]
    assert warnings == [data_wait_advice(0.5, datamodule)]
    assert warnings[0].startswith("training waited for data 50% of the time")
    assert "raise data.num_workers (now 0;" in warnings[0]


def test_data_wait_advice_counts_the_cores_this_process_may_use(monkeypatch):
    """A SLURM job or a container may be pinned to fewer cores than the machine has."""
    monkeypatch.setattr(callbacks.os, "sched_getaffinity", lambda pid: {0}, raising=False)
    advice = data_wait_advice(0.5, SimpleNamespace(num_workers=2))
    assert advice.endswith("raise data.num_workers (now 2; this machine has 1 cores)")


def test_data_wait_advice_names_each_setting_that_would_help():
    cores = len(callbacks.os.sched_getaffinity(0))
    starved = SimpleNamespace(num_workers=1, memory_cache_mb=0, resized_cache=None)
    assert data_wait_advice(0.4, starved) == (
        "training waited for data 40% of the time (decoding and cropping images could not "
        f"keep up with the model): raise data.num_workers (now 1; this machine has {cores} "
        "cores) or let data.memory_cache_mb keep decoded photos (0 now) or set "
        "data.resized_cache=DIR (copies at training size decode faster)"
    )
    cached = SimpleNamespace(num_workers=4, memory_cache_mb=512, resized_cache="copies")
    assert data_wait_advice(0.3, cached).endswith(
        f"raise data.num_workers (now 4; this machine has {cores} cores)"
    )
    # A datamodule of another package, with none of these settings: only the workers.
    assert data_wait_advice(0.3, object()).endswith(
        f"raise data.num_workers (now None; this machine has {cores} cores)"
    )


def loop(**settings) -> SimpleNamespace:
    """The trainer attributes ValidateTheEnd reads, in the middle of an endless run."""
    defaults = {"max_steps": -1, "global_step": 5, "max_epochs": None, "current_epoch": 0,
                "last_batch": False}  # fmt: skip
    settings = defaults | settings
    progress = SimpleNamespace(is_last_batch=settings.pop("last_batch"))
    return SimpleNamespace(**settings, should_stop=False, check_val_every_n_epoch=2,
                           fit_loop=SimpleNamespace(epoch_loop=SimpleNamespace(
                               batch_progress=progress)))  # fmt: skip


@pytest.mark.parametrize(
    ("settings", "final"),
    [
        ({"max_steps": 10, "global_step": 9}, False),
        ({"max_steps": 10, "global_step": 10}, True),
        ({"max_steps": 0, "global_step": 0}, True),
        ({"max_epochs": 3, "current_epoch": 2, "last_batch": True}, True),
        ({"max_epochs": 3, "current_epoch": 1, "last_batch": True}, False),
        ({"max_epochs": 3, "current_epoch": 2, "last_batch": False}, False),
        ({"max_epochs": 1, "current_epoch": 0, "last_batch": True}, True),
        ({"max_epochs": -1, "current_epoch": 9, "last_batch": True}, False),  # endless
    ],
)
def test_the_final_batch_stops_the_loop_so_that_it_is_validated(settings, final):
    trainer = loop(**settings)
    ValidateTheEnd().on_train_batch_end(trainer, None, None, None, 0)
    assert trainer.should_stop is final
    assert trainer.check_val_every_n_epoch == (None if final else 2)


def test_the_check_interval_is_a_positive_integer():
    with pytest.raises(ConfigError, match=r"^callbacks.nonfinite.check_every_n_steps=0 must be"):
        NonFiniteGuard(check_every_n_steps=0)


def test_losses_are_read_every_n_steps_after_the_last_check():
    model, guard = AlphaColorizer(), NonFiniteGuard(check_every_n_steps=3)
    guard.on_train_batch_end(stand_in(global_step=3), model, None, None, 0)  # checked: fine
    model.track_finite({"train/loss": torch.tensor(float("nan"))})
    guard.on_train_batch_end(stand_in(global_step=5), model, None, None, 0)  # not due
    with pytest.raises(TrainingDiverged, match="train/loss was NaN or infinite at step 0"):
        guard.on_train_batch_end(stand_in(global_step=6), model, None, None, 0)


def test_a_module_that_does_not_track_its_losses_is_not_asked():
    untracked = torch.nn.Linear(2, 2)
    NonFiniteGuard().on_train_end(stand_in(), untracked)
    NonFiniteGuard().on_save_checkpoint(stand_in(), untracked, {})


def test_a_nonfinite_loss_stops_training_when_checked_and_names_the_last_checkpoint(tmp_path):
    model = AlphaColorizer()
    guard = NonFiniteGuard(check_every_n_steps=3)
    kept = tmp_path / "last.ckpt"
    kept.write_bytes(b"a checkpoint")
    # A callback that saves nothing, a last.ckpt gone from disk, the best checkpoint.
    saved = [object(), SimpleNamespace(last_model_path=str(tmp_path / "gone.ckpt")),
             SimpleNamespace(best_model_path=str(kept))]  # fmt: skip
    last = tmp_path / "last-step2.ckpt"
    last.write_bytes(b"a checkpoint")
    trainer = stand_in(global_step=2, callbacks=saved)
    model.track_finite({"train/loss": torch.tensor(0.5), "train/l1": torch.tensor(float("inf"))})
    guard.on_train_batch_end(trainer, model, None, None, 0)  # 2 steps: not due yet
    guard.on_validation_start(stand_in("validate"), model)  # not within fit: no check
    trainer.global_step = 3
    with pytest.raises(TrainingDiverged) as stopped:
        guard.on_train_batch_end(trainer, model, None, None, 0)
    assert str(stopped.value) == (
        f"training diverged: train/l1 was NaN or infinite at step 0; stopped, the last good "
        f"checkpoint is {kept}. Lower model.lr and train again"
    )
    for check in (guard.on_train_end, guard.on_validation_start):
        with pytest.raises(TrainingDiverged, match="train/l1 was NaN"):
            check(stand_in(), model)
    # Without a best checkpoint, the last one (the state to resume from).
    trainer.callbacks = [saved[1], SimpleNamespace(last_model_path=str(last))]
    with pytest.raises(TrainingDiverged, match=f"the last good checkpoint is {last}"):
        guard.on_train_end(trainer, model)


def test_a_diverged_state_is_never_saved():
    model = AlphaColorizer()
    NonFiniteGuard().on_save_checkpoint(stand_in(global_step=7), model, {})  # finite: saved
    with torch.no_grad():
        model.net[2].weight[0, 0, 0, 0] = float("nan")
    with pytest.raises(TrainingDiverged) as stopped:
        NonFiniteGuard().on_save_checkpoint(stand_in(global_step=7), model, {})
    assert str(stopped.value) == (
        "training diverged: 1 weight tensors (first: net.2.weight) became NaN or infinite by "
        "step 7; stopped, no checkpoint was saved. Lower model.lr and train again"
    )
    # Finite weights after a NaN loss are not saved either.
    model = AlphaColorizer()
    model.track_finite({"train/loss": torch.tensor(float("inf"))})
    with pytest.raises(TrainingDiverged, match="train/loss was NaN or infinite at step 0"):
        NonFiniteGuard().on_save_checkpoint(stand_in(global_step=7), model, {})


@pytest.fixture
def global_generators():
    """Puts Python's, NumPy's and torch's global generators back as they were."""
    saved = random.getstate(), np.random.get_state(), torch.get_rng_state()  # noqa: NPY002
    yield
    random.setstate(saved[0])
    np.random.set_state(saved[1])  # noqa: NPY002
    torch.set_rng_state(saved[2])


def draws() -> tuple[float, float, float]:
    return random.random(), float(np.random.rand()), float(torch.rand(1))  # noqa: NPY002


def process(rank: int) -> SimpleNamespace:
    """The trainer attributes RandomStates reads, in process ``rank`` on the CPU."""
    return SimpleNamespace(
        global_rank=rank, strategy=SimpleNamespace(root_device=torch.device("cpu"))
    )


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 - NumPy's seeds are 32-bit
    torch.manual_seed(seed)


@pytest.mark.parametrize(("seed", "rank"), [(7, 0), (7, 1), (2**32 + 7, 1)])
def test_each_process_draws_from_seed_plus_rank(global_generators, seed, rank):
    RandomStates(seed=seed).setup(process(rank), None, "fit")
    first = draws()
    seed_all(seed + rank)
    assert first == draws()


def test_a_resumed_run_goes_on_with_the_random_numbers_it_had(global_generators, caplog):
    states = RandomStates(seed=7)
    states.setup(process(0), None, "fit")
    draws()
    saved = states.state_dict()
    assert len(saved["ranks"]) == 1
    expected = draws()
    draws()
    states.load_state_dict(saved)
    assert draws() == expected
    states.load_state_dict(saved["ranks"][0])  # a checkpoint from before per-rank states
    assert draws() == expected

    # A checkpoint of fewer processes than this run has: the extra process keeps its seed.
    other = RandomStates(seed=7)
    other.setup(process(1), None, "fit")
    fresh = draws()
    other.setup(process(1), None, "fit")
    other.load_state_dict(saved)
    assert draws() == fresh
    assert "holds the random states of 1 processes; process 1 keeps its fresh seed (8)" in (
        caplog.text
    )
