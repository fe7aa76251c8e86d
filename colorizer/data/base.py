"""What every image datamodule shares: the uint8 batch contract, splits, transforms, loaders.

Batches are always plain uint8 RGB tensors ``[B, 3, H, W]``. Workers only decode and crop;
conversion to float, Lab and normalisation happen batched on the model's device (README, Metrics),
where they are nearly free, instead of per sample in every worker.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from torchvision.io import ImageReadMode, decode_jpeg, read_file
from torchvision.transforms import v2

from colorizer.data.augment import DeviceAugmentation
from colorizer.data.images import SkippedImage, load_rgb
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


def derived_seed(*parts: object) -> int:
    """A 63-bit seed that is a pure function of ``parts`` (e.g. seed, epoch, index)."""
    digest = hashlib.blake2b(":".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1


class EpochShuffle(DistributedSampler):
    """Training order as a pure function of ``(seed, epoch)``, sharded over the processes of a
    distributed run, resumable mid-epoch; yields ``(epoch, index)`` keys.

    Lightning calls ``set_epoch`` at every epoch start, so a run resumed at epoch k sees the
    same order as one that never stopped, and the dataset can draw each sample's random crop
    from ``(seed, epoch, index)``: the same whatever the number of workers or restarts.

    Under DDP process ``rank`` takes every ``num_replicas``-th key of the epoch's order, padded
    by repeating the first keys so that all processes get ``len(self)`` (as PyTorch's
    DistributedSampler does; being one, Lightning does not wrap it in another). ``skip`` drops
    the first keys of this process's share of the next epoch iterated, once: the batches a
    run resumed mid-epoch has already trained on.
    """

    def __init__(
        self,
        dataset: Dataset,
        seed: int,
        epoch: int = 0,
        *,
        num_replicas: int = 1,
        rank: int = 0,
        skip: int = 0,
    ) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)
        self.epoch, self.skip = epoch, skip

    def __iter__(self) -> Iterator[tuple[int, int]]:
        length = len(self.dataset)  # type: ignore[arg-type]
        generator = torch.Generator().manual_seed(derived_seed("order", self.seed, self.epoch))
        order = torch.randperm(length, generator=generator).tolist()
        order = (order * math.ceil(self.total_size / length))[: self.total_size]
        share = order[self.rank : self.total_size : self.num_replicas]
        skip, self.skip = self.skip, 0
        return ((self.epoch, index) for index in share[skip:])


def _same_setting(first: Any, second: Any) -> bool:
    """Equal, or paths naming the same file or folder."""
    if isinstance(first, str) and isinstance(second, str):
        return Path(first).expanduser().resolve() == Path(second).expanduser().resolve()
    return first == second


def split_key(key: int | tuple[int, int]) -> tuple[int | None, int]:
    """``(epoch, index)`` of a dataset key: an index, or the ``(epoch, index)`` of EpochShuffle."""
    return (None, key) if isinstance(key, int) else (key[0], key[1])


class ImageFileDataset(Dataset[torch.Tensor]):
    """Image files decoded with :func:`load_rgb`, then cropped; items are uint8 ``[3, S, S]``.

    A file that passed the set-up scan but fails now (deleted, rewritten) is logged once and
    replaced by the next loadable index, so one bad file cannot kill a long run.
    """

    def __init__(
        self,
        paths: Sequence[Path],
        transform: Callable[[torch.Tensor], torch.Tensor],
        *,
        min_size: int = 16,
        decode_size: int | None = None,
        cache_folder: Path | None = None,
        seed: int | None = None,
    ) -> None:
        self.paths = list(paths)
        self.seed = seed
        self.transform = transform
        self.min_size = min_size
        self.decode_size = decode_size
        self.cache_folder = cache_folder
        self._failed: set[int] = set()  # per worker process; only used to warn once

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, key: int | tuple[int, int]) -> torch.Tensor:
        epoch, index = split_key(key)
        if epoch is None or self.seed is None:
            return self._load(index)
        # The random crop of (epoch, index) is the same in every run, worker and restart.
        with torch.random.fork_rng(devices=[]):
            # Only the CPU generator draws crops; torch.manual_seed would also queue a seed
            # for every GPU, recording a stack trace each time (~0.2 ms per image).
            torch.default_generator.manual_seed(derived_seed("crop", self.seed, epoch, index))
            return self._load(index)

    def _load(self, index: int) -> torch.Tensor:
        for offset in range(len(self.paths)):
            candidate = (index + offset) % len(self.paths)
            if candidate in self._failed:
                continue
            try:
                image = self._decode(self.paths[candidate])
            except (SkippedImage, OSError) as error:
                self._failed.add(candidate)
                log.warning("%s (passed the scan, fails now); using another image", error)
                continue
            return self.transform(image)
        raise DataError(f"none of the {len(self.paths)} images could be loaded any more")

    def _decode(self, path: Path) -> torch.Tensor:
        if self.cache_folder is not None and path.parent == self.cache_folder:
            # Our own resized copies: upright RGB JPEGs, which libjpeg-turbo through
            # torchvision decodes ~2x faster than PIL with load_rgb's checks.
            try:
                return decode_jpeg(read_file(str(path)), mode=ImageReadMode.RGB)
            except RuntimeError:
                pass  # e.g. a copy damaged on disk: the careful path says what is wrong
        return load_rgb(path, min_size=self.min_size, decode_size=self.decode_size)


class ImageDataModule(L.LightningDataModule):
    """Base for image datamodules: subclasses set ``train_set``, ``val_set``, ``test_set``.

    Args:
        image_size: side S of the square crops, in pixels.
        batch_size: images per batch.
        num_workers: DataLoader worker processes (0 decodes in the main process).
        seed: seeds the split, the training order of each epoch and each image's random
            crop in each epoch (``EpochShuffle``): the same whatever the number of workers,
            and after a resume. The device augmentation uses the global torch RNG, which
            ``lightning.seed_everything`` seeds and checkpoints carry (``RandomStates``).
        augment: keyword arguments of :class:`DeviceAugmentation` (``hflip``, ``degrees``,
            ``zoom``, ``shear``) for training batches; None: no augmentation beyond the crop.
    """

    # Constructor arguments that name the images read (a folder, a URL list), and those that
    # decide which image goes to which split; subclasses extend both (``split_differences``).
    source_settings: tuple[str, ...] = ()
    split_settings: tuple[str, ...] = ("seed",)

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

    def split_differences(self, trained: Mapping[str, Any]) -> dict[str, Any] | None:
        """How a training run's datamodule (its saved hyper-parameters) split the same images
        differently: ``{setting: its value}`` where it differs from this one's; None when
        ``trained`` read other images (another kind of data, or another source)."""
        ours = dict(self.hparams)
        if set(trained) != set(ours):
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

    def on_after_batch_transfer(self, batch: torch.Tensor, dataloader_idx: int) -> torch.Tensor:
        """Augment training batches on the device they were moved to; others pass through."""
        if self.trainer is not None and self.trainer.training and self.augmentation.active:
            self.augmentation.to(batch.device)
            return self.augmentation(batch)
        return batch

    def train_dataloader(self) -> DataLoader[torch.Tensor]:
        return self._loader(self.train_set, "train")

    def val_dataloader(self) -> DataLoader[torch.Tensor]:
        return self._loader(self.val_set, "val")

    def test_dataloader(self) -> DataLoader[torch.Tensor]:
        return self._loader(self.test_set, "test")

    def _train_sampler(self, dataset: Dataset[torch.Tensor]) -> EpochShuffle:
        """This process's share of the training order, from where training (re)starts.

        Lightning restores its loop counters before it asks for the loader, but would replay a
        resumed epoch from its first batch: the sampler skips the batches already trained.
        The first iterator (whose workers start filling at once, before Lightning calls
        ``set_epoch``) must also begin at the restored epoch, not at 0.
        """
        trainer = self.trainer
        ranks = {"num_replicas": trainer.world_size, "rank": trainer.global_rank} if trainer else {}
        sampler = EpochShuffle(dataset, self.seed, **ranks)
        if trainer is None:
            return sampler
        fit_loop = trainer.fit_loop
        sampler.set_epoch(int(fit_loop.epoch_progress.current.processed))
        if fit_loop.is_resuming:
            trained = int(fit_loop.epoch_loop.batch_progress.current.processed)
            if trained >= self._batches_per_epoch(len(sampler)):  # saved after its last batch
                sampler.set_epoch(sampler.epoch + 1)
            else:
                sampler.skip = trained * self.batch_size
        return sampler

    def _batches_per_epoch(self, samples: int) -> int:
        """Training batches per epoch for ``samples`` per process, as Lightning counts them."""
        drop_last = samples > self.batch_size
        batches = samples // self.batch_size if drop_last else math.ceil(samples / self.batch_size)
        limit = self.trainer.limit_train_batches if self.trainer else 1.0
        return min(batches, limit) if isinstance(limit, int) else int(batches * limit)

    def _loader(self, dataset: Dataset[torch.Tensor] | None, split: str) -> DataLoader:
        if dataset is None:
            raise RuntimeError(f"call setup() before asking for the {split} dataloader")
        train = split == "train"
        sampler = self._train_sampler(dataset) if train else None
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=sampler,
            # Each new iterator draws its workers' base seed from this generator: a fixed one
            # makes them reproducible, and keeps validation (the sanity check of a resumed
            # run too) from drawing on the global generator that augmentation draws from.
            generator=torch.Generator().manual_seed(self.seed),
            # Dropping the ragged last batch keeps batch statistics steady, but must never
            # drop a whole epoch of a tiny dataset (or of a process's share of one).
            drop_last=train and len(sampler) > self.batch_size,  # type: ignore[arg-type]
            num_workers=self.num_workers,
            pin_memory=torch.cuda.is_available(),
            persistent_workers=self.num_workers > 0,
        )
