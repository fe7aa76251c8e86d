"""The training stream: endless seeded batches across epochs, the same for any number of
workers and processes, resumable at any batch; and a run on it never restarts its loader."""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import lightning as L
import pytest
import torch
from torch.utils.data import Dataset

from colorizer.data import CuratedDataModule
from colorizer.data.base import ImageFileDataset
from colorizer.data.stream import ShuffledStream, StreamPlan, batches_per_epoch, plan_stream
from colorizer.errors import ConfigError
from colorizer.run import train
from tests.helpers import QUICK, SMALL_MODELS


class Keys(Dataset):
    """Items are the keys asked for: what the stream requests, made visible."""

    def __init__(self, size: int) -> None:
        self.size = size

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, key: tuple[int, int]) -> torch.Tensor:
        return torch.tensor(key)


def stream_keys(stream: ShuffledStream, batches: int) -> list[list[tuple[int, int]]]:
    return [[tuple(k) for k in b.tolist()] for b in itertools.islice(iter(stream), batches)]


def test_folder_smaller_than_a_batch_gives_full_batches_and_whole_passes() -> None:
    stream = ShuffledStream(Keys(3), batch_size=8, seed=5)
    keys = [key for batch in stream_keys(stream, 3) for key in batch]
    assert len(keys) == 24  # every batch is full
    for epoch in range(8):  # each pass shows each image once, in its own order
        assert sorted(i for e, i in keys if e == epoch) == [0, 1, 2]
    orders = {tuple(i for e, i in keys if e == epoch) for epoch in range(8)}
    assert len(orders) > 1  # passes are shuffled, each differently


def test_a_stream_started_at_batch_n_is_the_same_stream_from_there() -> None:
    whole = stream_keys(ShuffledStream(Keys(7), batch_size=3, seed=1), 9)
    resumed = stream_keys(ShuffledStream(Keys(7), batch_size=3, seed=1, start_batch=4), 5)
    assert resumed == whole[4:]


def test_processes_share_each_pass_between_them() -> None:
    shares = [
        stream_keys(ShuffledStream(Keys(10), batch_size=5, seed=2, num_replicas=2, rank=r), 2)
        for r in (0, 1)
    ]
    first_pass = [i for share in shares for i in (k[1] for k in share[0])]
    # 10 images, 2 processes: 5 each per pass, together every image once, none twice.
    assert sorted(first_pass) == list(range(10))
    assert shares[0] != shares[1]


def test_an_epoch_is_the_nearest_whole_number_of_batches_to_a_pass() -> None:
    assert batches_per_epoch(8, batch_size=8) == 1
    assert batches_per_epoch(3, batch_size=8) == 1  # never zero
    assert batches_per_epoch(10, batch_size=4) == 3  # 2.5 rounds up
    assert batches_per_epoch(7, batch_size=2, num_replicas=2) == 2  # 4 images per process


def test_batches_and_crops_do_not_depend_on_the_worker_count(tmp_path: Path, write_photos):
    write_photos(tmp_path / "photos", [f"p{i}.jpg" for i in range(5)], size=(96, 72))

    def batches(workers: int) -> list[torch.Tensor]:
        module = CuratedDataModule(
            str(tmp_path / "photos"), image_size=32, batch_size=4, num_workers=workers,
            val_fraction=0.0, test_fraction=0.0,
        )  # fmt: skip
        module.setup("fit")
        return list(itertools.islice(module.train_dataloader(), 6))  # nearly 5 passes

    reference = batches(0)
    for got in (batches(1), batches(2)):
        assert all(torch.equal(a, b) for a, b in zip(reference, got, strict=True))
    assert not torch.equal(reference[0], reference[1])


def test_each_pass_crops_a_photo_anew(tmp_path: Path, write_photos) -> None:
    """Training crops are random (position, scale and aspect): one photo gives another crop in
    each pass, so a model sees more than its centre."""
    write_photos(tmp_path / "photos", ["a.jpg", "b.jpg", "c.jpg"], size=(96, 72))
    module = CuratedDataModule(str(tmp_path / "photos"), image_size=32, val_fraction=0.0,
                               test_fraction=0.0)  # fmt: skip
    module.setup("fit")
    crops = [module.train_set[(epoch, 0)] for epoch in range(4)]
    assert all(crop.shape == (3, 32, 32) for crop in crops)
    different = [not torch.equal(a, b) for a, b in itertools.combinations(crops, 2)]
    assert all(different), f"{different.count(False)} of 6 pairs of passes cropped alike"


def test_images_kept_in_memory_are_not_decoded_again_and_crop_alike(tmp_path, write_photos):
    paths = write_photos(tmp_path / "photos", ["a.jpg", "b.jpg"], size=(160, 120))

    def dataset(memory_bytes: int) -> ImageFileDataset:
        module = CuratedDataModule(str(tmp_path / "photos"), image_size=32)
        return ImageFileDataset(
            paths, module.train_transform(), decode_size=54, reduce_to=(54, 32), seed=3,
            memory_bytes=memory_bytes,
        )  # fmt: skip

    kept, decoded = dataset(10**6), dataset(0)
    first = [kept[(0, i)] for i in (0, 1)]
    for path in paths:
        path.unlink()  # only a copy in memory can still give these images
    again = [kept[(1, i)] for i in (0, 1)]
    assert [tuple(x.shape) for x in again] == [(3, 32, 32)] * 2
    # Cropped from the same reduced source as a fresh decode would be: identical items.
    write_photos(tmp_path / "photos", ["a.jpg", "b.jpg"], size=(160, 120))
    assert all(torch.equal(a, decoded[(0, i)]) for i, a in enumerate(first))
    assert all(torch.equal(a, decoded[(1, i)]) for i, a in enumerate(again))


def test_memory_budget_bounds_what_is_kept(tmp_path: Path, write_photos) -> None:
    paths = write_photos(tmp_path / "photos", ["a.jpg", "b.jpg", "c.jpg"], size=(96, 72))
    module = CuratedDataModule(str(tmp_path / "photos"), image_size=32)
    one_image = 3 * 32 * 32
    dataset = ImageFileDataset(paths, module.eval_transform(), memory_bytes=one_image + 1)
    for index in range(3):
        dataset[index]
    assert dataset._kept_bytes <= one_image + 1 and len(dataset._kept) == 1


def trainer_for(**settings) -> L.Trainer:
    return L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, **settings)


def test_epoch_settings_become_batches_of_the_stream() -> None:
    trainer = trainer_for(max_epochs=3, val_check_interval=1.0, check_val_every_n_epoch=2)
    assert plan_stream(trainer, pass_batches=5) == StreamPlan(5, final_batch=15)
    assert (trainer.val_check_interval, trainer.check_val_every_n_epoch) == (10, None)
    assert trainer.fit_loop.max_epochs == -1  # the stream stops the run, not Lightning

    trainer = trainer_for(max_epochs=-1, max_steps=50, val_check_interval=0.5)
    assert plan_stream(trainer, pass_batches=5) == StreamPlan(5)  # steps decide
    assert trainer.val_check_interval == 2


def test_limits_and_overfitting_shorten_the_epoch() -> None:
    trainer = trainer_for(max_epochs=2, limit_train_batches=3)
    assert plan_stream(trainer, pass_batches=5) == StreamPlan(3, final_batch=6)
    trainer = trainer_for(max_epochs=2, limit_train_batches=0.5)
    assert plan_stream(trainer, pass_batches=5) == StreamPlan(2, final_batch=4)
    assert trainer.limit_train_batches == 2  # what Lightning accepts for an endless loader
    trainer = trainer_for(max_steps=10, overfit_batches=2)
    assert plan_stream(trainer, pass_batches=5) == StreamPlan(2, repeat_batches=2)
    repeated = stream_keys(ShuffledStream(Keys(9), batch_size=2, seed=0, repeat_batches=2), 6)
    assert repeated[:2] == repeated[2:4] == repeated[4:] and repeated[0] != repeated[1]


def test_minimums_and_zero_epochs() -> None:
    trainer = trainer_for(max_epochs=2, min_steps=3)  # Lightning adds min_epochs=1 itself
    plan_stream(trainer, pass_batches=5)
    assert trainer.fit_loop.min_epochs == 0  # else no stop would ever be honoured
    with pytest.raises(ConfigError, match="trainer.min_epochs=2: .* use trainer.min_steps"):
        plan_stream(trainer_for(max_epochs=4, min_epochs=2), pass_batches=5)
    trainer = trainer_for(max_epochs=0)
    assert plan_stream(trainer, pass_batches=5).final_batch == 0
    assert trainer.fit_loop.epoch_loop.max_steps == 0  # not even one batch


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"val_check_interval": 0.5, "check_val_every_n_epoch": 2}, "=0.5 with"),
        ({"val_check_interval": 3, "check_val_every_n_epoch": 2}, "=3 (batches) with"),
        ({"val_check_interval": "00:00:01:00", "check_val_every_n_epoch": 2}, "duration (time)"),
    ],
)
def test_validation_settings_without_a_batch_count_are_refused(settings, message) -> None:
    with pytest.raises(ConfigError, match=rf"trainer.val_check_interval.*{re.escape(message)}"):
        plan_stream(trainer_for(**settings), pass_batches=5)


class LoaderProbe(L.Callback):
    """Records the epochs Lightning starts, the loader iterator behind every training batch
    and every batch's size (the run builds it from the config: ``made`` keeps it)."""

    made: list[LoaderProbe] = []

    def __init__(self) -> None:
        self.epochs, self.iterators, self.sizes, self.batches = 0, set(), [], []
        LoaderProbe.made.append(self)

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.epochs += 1

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.iterators.add(id(trainer.train_dataloader._iterator))
        self.sizes.append(batch.shape[0])
        self.batches.append(batch.cpu().clone())


PROBE = "tests.data.test_stream.LoaderProbe"


def test_a_run_on_a_tiny_folder_starts_one_epoch_and_one_loader(make_cfg):
    """3 images, batches of 8: 30 steps are 80 passes over the folder, yet Lightning starts
    one epoch and one loader iterator (no restart of the workers, no drained prefetch), and
    every batch is full."""
    LoaderProbe.made.clear()
    train(make_cfg(
        *SMALL_MODELS["alpha"], *QUICK, "data.num_train=3", "data.batch_size=8",
        "data.image_size=16", "data.num_workers=2", "trainer.max_steps=30",
        "trainer.val_check_interval=10", f"+callbacks.probe._target_={PROBE}",
    ))  # fmt: skip
    (probe,) = LoaderProbe.made
    assert probe.epochs == 1
    assert len(probe.iterators) == 1
    assert probe.sizes == [8] * 30


def test_overfitting_trains_on_the_same_batch_every_step(make_cfg) -> None:
    """``trainer.overfit_batches=1`` (the alpha seed recipe): one batch, crops included."""
    LoaderProbe.made.clear()
    train(make_cfg(*SMALL_MODELS["alpha"], *QUICK, "data.image_size=16", "data.num_train=8",
                   "+trainer.overfit_batches=1", "trainer.max_steps=4",
                   "callbacks.samples=null", f"+callbacks.probe._target_={PROBE}"))  # fmt: skip
    (probe,) = LoaderProbe.made
    assert len(probe.batches) == 4
    assert all(torch.equal(batch, probe.batches[0]) for batch in probe.batches)


def test_waiting_for_data_is_measured_and_said_once(make_cfg, caplog) -> None:
    """Decoding in the main process (no workers) is all waiting, as the run reports."""
    summary = train(make_cfg(
        *SMALL_MODELS["alpha"], *QUICK, "data.num_workers=0", "data.image_size=16",
        "data.batch_size=4", "trainer.max_steps=12", "trainer.val_check_interval=4",
        "callbacks.throughput.warmup_batches=1", "callbacks.throughput.warn_data_wait=0.001",
    ))  # fmt: skip
    assert 0 < summary["train_data_wait_fraction"] < 1
    warnings = [r.getMessage() for r in caplog.records if "waited for data" in r.getMessage()]
    assert len(warnings) == 1  # three timed segments (validations at 4, 8, 12), one warning
    assert "raise data.num_workers (now 0;" in warnings[0]
