"""The training stream: endless, seeded batches that run on across epochs.

Training is counted in steps, so an epoch is bookkeeping, not a boundary: the workers decode
pass after pass over the training images, each pass in its own seeded order, and batches run
on from one pass into the next. A folder smaller than a batch still gives full batches, and no
epoch ever drains the loader's prefetch queue or restarts its workers (with a one-batch epoch,
that restart cost as much as the step itself).

What the stream keeps from epoch-based loading:

- Order and crops are pure functions of the seed and the position in the stream: pass ``e``
  visits the images in a permutation seeded by ``(seed, e)``, and image ``i`` of pass ``e`` is
  cropped with a generator seeded by ``(seed, e, i)`` (:class:`ImageFileDataset`), whatever the
  number of workers.
- Several processes (DDP) each take every ``num_replicas``-th image of a pass, a pass padded
  by repeating its first images so that all have as many, as PyTorch's DistributedSampler does.
  A dataset may order a pass itself (``pass_order(generator)``: shards read a few at a time)
  and ask for contiguous shares (``contiguous_ranks``: rank ``r`` takes positions
  ``r·P … r·P + P − 1`` of the padded pass, so it reads about 1/N of the shards); the padding
  rule is the same.
- A run resumed after ``n`` batches starts the stream at batch ``n``: the batches the run that
  never stopped would have trained on, with the same crops.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, get_worker_info

from colorizer.errors import ConfigError


def derived_seed(*parts: object) -> int:
    """A 63-bit seed that is a pure function of ``parts`` (e.g. seed, epoch, index)."""
    digest = hashlib.blake2b(":".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1


def images_per_pass(dataset_size: int, num_replicas: int) -> int:
    """Images one process sees per pass over ``dataset_size`` images shared by ``num_replicas``."""
    return math.ceil(dataset_size / num_replicas)


def batches_per_epoch(dataset_size: int, batch_size: int, num_replicas: int = 1) -> int:
    """An epoch in batches: the whole number of full batches closest to one pass over the
    training images (at least one), per process."""
    return max(1, math.floor(images_per_pass(dataset_size, num_replicas) / batch_size + 0.5))


class ShuffledStream(IterableDataset[torch.Tensor]):
    """Endless uint8 batches ``[B, 3, S, S]`` of one process's share of ``dataset``.

    Batch ``b`` holds positions ``b·B … b·B + B − 1`` of this process's stream (module
    docstring); a DataLoader worker ``w`` of ``W`` makes batches ``start + w``,
    ``start + w + W``, …, and the DataLoader hands them out in worker order, so the batches
    arrive as ``start, start + 1, …`` for any number of workers. Items of ``dataset`` are
    requested by ``(epoch, index)`` keys. ``repeat_batches=N``: the stream's first N batches
    over and over (``overfit_batches``), crops included.
    """

    def __init__(
        self,
        dataset: Dataset[torch.Tensor],
        batch_size: int,
        seed: int,
        *,
        num_replicas: int = 1,
        rank: int = 0,
        start_batch: int = 0,
        repeat_batches: int | None = None,
    ) -> None:
        self.dataset = dataset
        self.size = len(dataset)  # type: ignore[arg-type]
        if self.size == 0:
            raise ValueError("the training stream needs at least one image")
        self.batch_size, self.seed = batch_size, seed
        self.num_replicas, self.rank, self.start_batch = num_replicas, rank, start_batch
        self.repeat_batches = repeat_batches
        self.per_pass = images_per_pass(self.size, num_replicas)
        self._orders: dict[int, list[int]] = {}

    def __iter__(self) -> Iterator[torch.Tensor]:
        worker = get_worker_info()
        first, step = (worker.id, worker.num_workers) if worker is not None else (0, 1)
        for batch in itertools.count(self.start_batch + first, step):
            yield torch.stack([self.dataset[key] for key in self.keys(batch)])

    def keys(self, batch: int) -> list[tuple[int, int]]:
        """The ``(epoch, index)`` keys of batch ``batch`` of this process's stream."""
        if self.repeat_batches:
            batch %= self.repeat_batches
        keys = []
        contiguous = getattr(self.dataset, "contiguous_ranks", False)
        for position in range(batch * self.batch_size, (batch + 1) * self.batch_size):
            epoch, offset = divmod(position, self.per_pass)
            if contiguous:
                at = self.rank * self.per_pass + offset
            else:
                at = self.rank + offset * self.num_replicas
            keys.append((epoch, self._order(epoch)[at]))
        return keys

    def _order(self, epoch: int) -> list[int]:
        if epoch not in self._orders:
            generator = torch.Generator().manual_seed(derived_seed("order", self.seed, epoch))
            pass_order = getattr(self.dataset, "pass_order", None)
            if pass_order is not None:
                order = pass_order(generator)
            else:
                order = torch.randperm(self.size, generator=generator).tolist()
            total = self.per_pass * self.num_replicas
            self._orders = {epoch: (order * math.ceil(total / self.size))[:total]}
        return self._orders[epoch]


class TrainingBatches:
    """What Lightning iterates for training: one DataLoader iterator over a
    :class:`ShuffledStream`, kept for the whole fit, and the time spent waiting for it.

    Lightning asks for a new iterator at every epoch it counts (one, in a run counted in
    steps); each gets this same one, so the workers and their prefetched batches carry over.
    It has no length: Lightning treats it as an endless epoch and stops at ``max_steps``.
    ``wait_s`` is the time the training loop spent blocked on the next batch
    (:class:`~colorizer.callbacks.TrainingThroughput` reports its share).
    """

    def __init__(self, loader: DataLoader[torch.Tensor]) -> None:
        self.loader = loader
        # The name Lightning looks for when it shuts the workers down at the end of fit.
        self._iterator: Iterator[Any] | None = None
        self.wait_s = 0.0

    def __iter__(self) -> TrainingBatches:
        return self  # the workers start at the first batch asked for, not here

    def __next__(self) -> torch.Tensor:
        start = time.perf_counter()
        if self._iterator is None:
            self._iterator = iter(self.loader)
        batch = next(self._iterator)
        self.wait_s += time.perf_counter() - start
        return batch

    @property
    def dataset(self) -> ShuffledStream:
        return self.loader.dataset  # type: ignore[return-value]

    def close(self) -> None:
        """Stop the worker processes now (Lightning does it at the end of fit; a caller that
        reads batches itself calls this), rather than when the iterator is collected."""
        shutdown = getattr(self._iterator, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()
        self._iterator = None


@dataclass(frozen=True)
class StreamPlan:
    """How a fit reads the stream: ``batches_per_epoch`` (what an epoch is), ``final_batch``
    (the batch an epoch-based run stops after; None: ``max_steps`` decides) and
    ``repeat_batches`` (``overfit_batches``: the stream repeats its first batches)."""

    batches_per_epoch: int
    final_batch: int | None = None
    repeat_batches: int | None = None


def plan_stream(trainer: Any, pass_batches: int) -> StreamPlan:
    """Fit a Trainer's epoch-based settings onto the stream, rewriting them as batch counts
    before Lightning reads them (it computes its schedule right after asking for the
    training loader); ``pass_batches``: :func:`batches_per_epoch` of the dataset.

    Lightning sees one endless epoch, so: ``limit_train_batches`` (an int, or a fraction of
    an epoch) and ``overfit_batches`` shorten the epoch (overfitting repeats its batches);
    ``max_epochs`` becomes the batch the run stops after; a fractional
    ``val_check_interval`` and ``check_val_every_n_epoch`` become a validation every so many
    batches; ``min_epochs``, which Lightning's endless epoch would never reach (so no stop
    would ever be honoured), must be given as ``min_steps``. Raises ``ConfigError`` for
    combinations that have no batch count.
    """
    epoch = _epoch_length(trainer, pass_batches)
    _validation_in_batches(trainer, epoch)
    loop = trainer.fit_loop
    if loop.min_epochs and loop.epoch_loop.min_steps is None:
        raise ConfigError(
            f"trainer.min_epochs={loop.min_epochs}: training reads one endless stream, so "
            "a minimum is counted in optimizer steps: use trainer.min_steps"
        )
    loop.min_epochs = 0  # Lightning's default 1 when min_steps is set: steps decide
    repeat = epoch if trainer.overfit_batches > 0 else None
    max_epochs = loop.max_epochs
    if max_epochs is None or max_epochs < 0:
        return StreamPlan(epoch, None, repeat)
    loop.max_epochs = -1  # the stream's own count stops the run
    if max_epochs == 0:
        loop.epoch_loop.max_steps = 0  # nothing to train (Lightning stops before a batch)
    return StreamPlan(epoch, max_epochs * epoch, repeat)


def _epoch_length(trainer: Any, pass_batches: int) -> int:
    """Batches per epoch: a pass, or what ``limit_train_batches`` (Lightning sets it from
    ``overfit_batches`` too) leaves of it; the limit is rewritten as that int, which is all
    Lightning accepts for a loader without a length."""
    limit = trainer.limit_train_batches
    if isinstance(limit, float) and limit == 1.0:
        return pass_batches
    epoch = limit if isinstance(limit, int) else max(1, int(limit * pass_batches))
    trainer.limit_train_batches = epoch
    return epoch


def _validation_in_batches(trainer: Any, epoch: int) -> None:
    every_n_epochs = trainer.check_val_every_n_epoch
    if getattr(trainer, "_val_check_time_interval", None) is not None:  # a wall-clock interval
        interval, unit = "a duration", " (time)"
    else:
        interval = trainer.val_check_interval
        unit = "" if isinstance(interval, float) else " (batches)"
    if every_n_epochs not in (None, 1) and not (isinstance(interval, float) and interval == 1.0):
        raise ConfigError(
            f"trainer.val_check_interval={interval}{unit} with trainer.check_val_every_n_epoch="
            f"{every_n_epochs}: validate every N epochs (val_check_interval=1.0) or every so "
            "much of each epoch (check_val_every_n_epoch=1 or null), not both"
        )
    if isinstance(interval, float):
        trainer.val_check_interval = max(1, int(interval * epoch)) * (every_n_epochs or 1)
    trainer.check_val_every_n_epoch = None
