"""What every image datamodule shares: the uint8 batch contract, splits, transforms, loaders.

Batches are always plain uint8 RGB tensors ``[B, 3, H, W]``. Workers only decode and crop;
conversion to float, Lab and normalisation happen batched on the model's device (README, Metrics),
where they are nearly free, instead of per sample in every worker.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset
from torchcodec.decoders import decode_jpeg
from torchvision.transforms import v2

from colorizer.data.augment import DeviceAugmentation
from colorizer.data.cache import reduce_to_area
from colorizer.data.images import SkippedImage, load_rgb, pixel_limit
from colorizer.data.loaders import image_loader
from colorizer.data.stream import (
    ShuffledStream,
    StreamPlan,
    TrainingBatches,
    batches_per_epoch,
    derived_seed,
    plan_stream,
)
from colorizer.errors import DataError, require_int

log = logging.getLogger(__name__)

T = TypeVar("T")

# Random-resized-crop range: wide enough to augment, never so tight that a crop shows
# only a texture with no context for its colour.
TRAIN_CROP_SCALE = (0.35, 1.0)
TRAIN_CROP_RATIO = (3 / 4, 4 / 3)


def check_fractions(val_fraction: float, test_fraction: float) -> None:
    """Raise DataError unless both fractions are in [0, 1) and leave room for training."""
    for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= value < 1.0:
            raise DataError(f"data.{name}={value} must be in [0, 1), e.g. 0.15")
    if val_fraction + test_fraction >= 1.0:
        raise DataError(
            f"data.val_fraction + data.test_fraction = {val_fraction + test_fraction:g} "
            "leaves nothing to train on: keep their sum below 1"
        )


def seeded_split(
    items: Sequence[T],
    val_fraction: float,
    test_fraction: float,
    seed: int,
    *,
    key: Callable[[T], str] = str,
) -> tuple[list[T], list[T], list[T]]:
    """Split items into (train, val, test), deterministically and independent of input order.

    Items are ranked by a hash of ``(seed, key(item))``, so the split depends only on the
    seed and the item names, and adding files moves few existing items between splits (the
    test set stays a test set as a dataset grows). With 3 or more items every split whose
    fraction is non-zero gets at least one item and train keeps at least one.

    Args:
        items: things to split; ``key`` names each one (pass names relative to the dataset
            root, so the split does not depend on where the folder lives).
        val_fraction, test_fraction: shares in [0, 1) with a sum below 1.
        seed: the split seed.

    Returns:
        Three disjoint lists covering ``items``, each sorted by key.
    """
    check_fractions(val_fraction, test_fraction)
    ranked = sorted(items, key=lambda item: (_rank(seed, key(item)), key(item)))
    n = len(ranked)
    n_val, n_test = (math.floor(n * f + 0.5) for f in (val_fraction, test_fraction))
    if n >= 3:
        n_val = max(n_val, 1) if val_fraction > 0 else 0
        n_test = max(n_test, 1) if test_fraction > 0 else 0
    while n_val + n_test > max(n - 1, 0):  # train keeps at least one item
        if n_val >= n_test:
            n_val -= 1
        else:
            n_test -= 1
    test, val, train = ranked[:n_test], ranked[n_test : n_test + n_val], ranked[n_test + n_val :]
    return sorted(train, key=key), sorted(val, key=key), sorted(test, key=key)


def _rank(seed: int, name: str) -> bytes:
    return hashlib.blake2b(f"{seed}:{name}".encode(), digest_size=8).digest()


def _same_setting(first: Any, second: Any) -> bool:
    """Equal, or paths naming the same file or folder."""
    if isinstance(first, str) and isinstance(second, str):
        return Path(first).expanduser().resolve() == Path(second).expanduser().resolve()
    return first == second


def split_key(key: int | tuple[int, int]) -> tuple[int | None, int]:
    """``(epoch, index)`` of a dataset key: an index, or the ``(epoch, index)`` of the training
    stream (:class:`~colorizer.data.stream.ShuffledStream`)."""
    return (None, key) if isinstance(key, int) else (key[0], key[1])


def seeded_item(
    seed: int | None, epoch: int | None, index: int, load: Callable[[int], torch.Tensor]
) -> torch.Tensor:
    """``load(index)``, its random crop drawn from a generator seeded by ``(seed, epoch,
    index)``: the same in every run, worker and restart (no seed or epoch: as it comes)."""
    if epoch is None or seed is None:
        return load(index)
    with torch.random.fork_rng(devices=[]):
        # Only the CPU generator draws crops; torch.manual_seed would also queue a seed
        # for every GPU, recording a stack trace each time (~0.2 ms per image).
        torch.default_generator.manual_seed(derived_seed("crop", seed, epoch, index))
        return load(index)


class ImageFileDataset(Dataset[torch.Tensor]):
    """Image files decoded with :func:`load_rgb`, then cropped; items are uint8 ``[3, S, S]``.

    A training set (``reduce_to=(side, min_side)``) first reduces each decoded image to
    ``side``² pixels, its shorter side at least ``min_side`` (the area rule of the resized
    cache, :func:`~colorizer.data.cache.reduce_to_area`), then draws its random crop from that:
    enough for every crop the training transform can take, and small. An evaluation set's
    items are deterministic (resize and centre crop).

    Up to ``memory_bytes`` of those reduced sources (training) or finished items (evaluation)
    are kept in memory, per process (each DataLoader worker has its own): a folder of a few
    hundred photos is decoded once per worker, not once per epoch, so small folders train as
    fast per image as from a resized cache, or faster. Cached or not, an item is the same.

    A file that passed the set-up scan but fails now (deleted, rewritten) is logged once and
    replaced by the next loadable index, so one bad file cannot kill a long run. Files over
    ``max_megapixels`` are refused as decompression bombs (None: Pillow's guard, 89.5 MP).
    """

    def __init__(
        self,
        paths: Sequence[Path],
        transform: Callable[[torch.Tensor], torch.Tensor],
        *,
        min_size: int = 16,
        decode_size: int | None = None,
        reduce_to: tuple[int, int] | None = None,
        cache_folder: Path | None = None,
        seed: int | None = None,
        memory_bytes: int = 0,
        max_megapixels: float | None = None,
    ) -> None:
        self.paths = list(paths)
        self.max_megapixels = max_megapixels
        self.seed = seed
        self.transform = transform
        self.min_size = min_size
        self.decode_size = decode_size
        self.reduce_to = reduce_to
        self.cache_folder = cache_folder
        self.memory_bytes = memory_bytes
        self._kept: dict[int, torch.Tensor] = {}  # per process, like everything below
        self._kept_bytes = 0
        self._failed: set[int] = set()  # only used to warn once

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, key: int | tuple[int, int]) -> torch.Tensor:
        epoch, index = split_key(key)
        return seeded_item(self.seed, epoch, index, self._load)

    def _load(self, index: int) -> torch.Tensor:
        for offset in range(len(self.paths)):
            candidate = (index + offset) % len(self.paths)
            if candidate in self._failed:
                continue
            kept = self._kept.get(candidate)
            if kept is not None:
                return kept if self.reduce_to is None else self.transform(kept)
            try:
                image = self._decode(self.paths[candidate])
            except (SkippedImage, OSError) as error:
                self._failed.add(candidate)
                log.warning("%s (passed the scan, fails now); using another image", error)
                continue
            if self.reduce_to is None:  # evaluation: the finished item is what is kept
                # A copy: the centre crop is a view that would keep the whole image alive.
                image = self.transform(image).clone(memory_format=torch.contiguous_format)
                self._keep(candidate, image)
                return image
            image = reduce_to_area(image, *self.reduce_to)
            self._keep(candidate, image)
            return self.transform(image)
        raise DataError(f"none of the {len(self.paths)} images could be loaded any more")

    def _keep(self, index: int, image: torch.Tensor) -> None:
        size = image.numel() * image.element_size()
        if self._kept_bytes + size <= self.memory_bytes:
            self._kept[index] = image
            self._kept_bytes += size

    def _decode(self, path: Path) -> torch.Tensor:
        if self.cache_folder is not None and path.parent == self.cache_folder:
            # Our own resized copies: upright RGB JPEGs, which libjpeg-turbo through
            # TorchCodec decodes ~1.3x faster than PIL with load_rgb's checks.
            try:
                return decode_jpeg(path, mode="RGB")
            except (RuntimeError, ValueError):
                pass  # e.g. a copy damaged or empty on disk: the careful path says what is wrong
        # Pillow's limit is the process's: a loader worker's, or the main process's when it
        # decodes (num_workers=0), where no other thread decodes meanwhile.
        with pixel_limit(self.max_megapixels):
            return load_rgb(path, min_size=self.min_size, decode_size=self.decode_size)


class ImageDataModule(L.LightningDataModule):
    """Base for image datamodules: subclasses set ``train_set``, ``val_set``, ``test_set``.

    Args:
        image_size: side S of the square crops, in pixels.
        batch_size: images per batch.
        num_workers: DataLoader worker processes (0 decodes in the main process).
        seed: seeds the split, the training order of each pass and each image's random
            crop in each pass (:mod:`colorizer.data.stream`): the same whatever the number of
            workers, and after a resume. The device augmentation uses the global torch RNG,
            which ``lightning.seed_everything`` seeds and checkpoints carry (``RandomStates``).
        augment: keyword arguments of :class:`DeviceAugmentation` (``hflip``, ``degrees``,
            ``zoom``, ``shear``) for training batches; None: no augmentation beyond the crop.

    Training reads an endless stream (:class:`~colorizer.data.stream.ShuffledStream`). The
    datamodule counts the batches that reach training (``batches_trained``, saved in
    checkpoints), which is where a resumed run's stream starts and what the data epoch
    (``epoch``) is counted from; an epoch-based run (``trainer.max_epochs``) stops at its
    last batch here.
    """

    # Constructor arguments that name the images read (a folder, a URL list), and those that
    # decide which image goes to which split; subclasses extend both (``split_differences``).
    source_settings: tuple[str, ...] = ()
    split_settings: tuple[str, ...] = ("seed",)
    # Split settings added since checkpoints were first written, with the value every run had
    # before (a checkpoint without them read the same images), and settings since renamed.
    settings_added: dict[str, Any] = {}
    settings_retired: tuple[str, ...] = ()

    def __init__(
        self,
        image_size: int,
        batch_size: int,
        num_workers: int,
        seed: int,
        augment: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        for name, value, least in (
            ("image_size", image_size, 1),
            ("batch_size", batch_size, 1),
            ("num_workers", num_workers, 0),
        ):
            require_int(f"data.{name}", value, least, error=DataError)
        self.image_size = image_size
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.seed = seed
        try:
            self.augmentation = DeviceAugmentation(**(augment or {"hflip": False}))
        except (TypeError, ValueError) as error:
            raise DataError(f"data.augment: {error}") from error
        self.train_set: Dataset[torch.Tensor] | None = None
        self.val_set: Dataset[torch.Tensor] | None = None
        self.test_set: Dataset[torch.Tensor] | None = None
        self.batches_trained = 0
        # From this datamodule's creation (a run's start, after imports) to its first batch in
        # training: what set-up (scanning, caching, reading a manifest) costs a run.
        self._created = time.perf_counter()
        self.first_batch_s: float | None = None
        self.plan = StreamPlan(batches_per_epoch=1)
        self._planned_for: Any = None  # the Trainer whose settings the plan rewrote
        self._restored = False

    def split_differences(self, trained: Mapping[str, Any]) -> dict[str, Any] | None:
        """How a training run's datamodule (its saved hyper-parameters) split the same images
        differently: ``{setting: its value}`` where it differs from this one's; None when
        ``trained`` read other images (another kind of data, or another source)."""
        ours = dict(self.hparams)
        added = {key: value for key, value in self.settings_added.items() if key in ours}
        trained = added | {k: v for k, v in trained.items() if k not in self.settings_retired}
        # A setting added since the checkpoint was made (e.g. memory_cache_mb) is absent from
        # it; one that decides the images or the split must be there (or in settings_added).
        missing = set(ours) - set(trained)
        if set(trained) - set(ours) or missing & {*self.source_settings, *self.split_settings}:
            return None
        if any(not _same_setting(trained[key], ours[key]) for key in self.source_settings):
            return None
        return {key: trained[key] for key in self.split_settings if trained[key] != ours[key]}

    def train_transform(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """uint8 ``[3, H, W]`` -> uint8 ``[3, S, S]``: a random resized crop.

        Flips and warps are not done here but batched on the device (``augment``).
        """
        return v2.RandomResizedCrop(
            self.image_size, scale=TRAIN_CROP_SCALE, ratio=TRAIN_CROP_RATIO, antialias=True
        )

    def eval_transform(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """uint8 ``[3, H, W]`` -> uint8 ``[3, S, S]``: shorter side to S, then centre crop."""
        return v2.Compose(
            [v2.Resize(self.image_size, antialias=True), v2.CenterCrop(self.image_size)]
        )

    @property
    def epoch(self) -> int:
        """The epoch (``plan.batches_per_epoch`` batches each, from 0) of the latest batch to
        enter training: during a training step, the epoch of the batch being trained."""
        return max(self.batches_trained - 1, 0) // self.plan.batches_per_epoch

    @property
    def final_batch(self) -> int | None:
        """The batch an epoch-based run stops after (None: ``max_steps`` decides)."""
        return self.plan.final_batch

    def state_dict(self) -> dict[str, Any]:
        return {"batches_trained": self.batches_trained}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.batches_trained = int(state_dict["batches_trained"])
        self._restored = True

    def on_after_batch_transfer(self, batch: torch.Tensor, dataloader_idx: int) -> torch.Tensor:
        """Count training batches and augment them on the device they were moved to; other
        batches pass through.

        Called once per batch as it enters a training step, so the count is what a checkpoint
        taken after that step has trained on (the loader's own position is further on: its
        workers prefetch). At an epoch-based run's last batch it asks Lightning to stop after
        it, which also has Lightning validate that batch's result.
        """
        trainer = self.trainer
        if trainer is None or not trainer.training:
            return batch
        self.batches_trained += 1
        if self.first_batch_s is None:
            self.first_batch_s = time.perf_counter() - self._created
        if self.final_batch is not None and self.batches_trained >= self.final_batch:
            trainer.should_stop = True
        if self.augmentation.active:
            self.augmentation.to(batch.device)
            return self.augmentation(batch)
        return batch

    def train_dataloader(self) -> TrainingBatches:
        """This process's endless training stream, from the batch training (re)starts at.

        Lightning restores ``batches_trained`` from a checkpoint before it asks for this, so a
        resumed run goes on with exactly the batches the uninterrupted run trained on next.
        """
        if self.train_set is None:
            raise RuntimeError("call setup() before asking for the train dataloader")
        trainer = self.trainer
        replicas, rank = (trainer.world_size, trainer.global_rank) if trainer else (1, 0)
        size = len(self.train_set)  # type: ignore[arg-type]
        pass_batches = batches_per_epoch(size, self.batch_size, replicas)
        if trainer is None:
            self.plan = StreamPlan(pass_batches)
        elif self._planned_for is not trainer:  # the settings are rewritten once per Trainer
            self.plan, self._planned_for = plan_stream(trainer, pass_batches), trainer
            self._resume_from_loop_state(trainer)
        stream = ShuffledStream(
            self.train_set, self.batch_size, self.seed, num_replicas=replicas, rank=rank,
            start_batch=self.batches_trained, repeat_batches=self.plan.repeat_batches,
        )  # fmt: skip
        # The stream makes whole batches in the workers (batch_size=None: no collation).
        return TrainingBatches(self._loader(stream, batch_size=None, persistent=False))

    def _resume_from_loop_state(self, trainer: Any) -> None:
        """A checkpoint written before the stream existed has no batch count: take Lightning's
        count of the batches it trained, so the run goes on (GAN pre-training included) from
        there, in the stream's order rather than the old run's."""
        if self._restored or not trainer.ckpt_path:
            return
        trained = int(trainer.fit_loop.epoch_loop.batch_progress.total.processed)
        if trained:
            self.batches_trained = trained
            log.warning(
                "%s holds no training-stream position (written by an older version): "
                "continuing after its %d batches, with other images per batch than the "
                "interrupted run would have had", trainer.ckpt_path, trained,
            )  # fmt: skip

    def val_dataloader(self) -> DataLoader[torch.Tensor]:
        return self._evaluation_loader(self.val_set, "val")

    def test_dataloader(self) -> DataLoader[torch.Tensor]:
        return self._evaluation_loader(self.test_set, "test")

    def _evaluation_loader(self, dataset: Dataset[torch.Tensor] | None, split: str) -> DataLoader:
        if dataset is None:
            raise RuntimeError(f"call setup() before asking for the {split} dataloader")
        return self._loader(dataset, batch_size=self.batch_size, persistent=self.num_workers > 0)

    def _loader(self, dataset: Dataset[torch.Tensor], batch_size: int | None, persistent: bool):
        # Seeded: validation's loader and a resumed run's training stream must not draw on the
        # global generator that augmentation uses.
        return image_loader(dataset, batch_size=batch_size, num_workers=self.num_workers,
                            seed=self.seed, persistent=persistent)  # fmt: skip
