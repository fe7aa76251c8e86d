"""The one place DataLoaders are made: training, validation, evaluation, colorize, bench."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset


def image_loader(
    dataset: Dataset,
    *,
    batch_size: int | None,
    num_workers: int,
    device: torch.device | None = None,
    seed: int | None = None,
    collate_fn: Callable[[list[Any]], Any] | None = None,
    persistent: bool = False,
) -> DataLoader:
    """A DataLoader of ``dataset`` with the settings every loader here shares.

    Args:
        batch_size: items per batch; None when the dataset yields whole batches.
        num_workers: loader processes (0: in this process).
        device: where the batches go: pinned host memory when that is a GPU (None: any GPU
            there is, as Lightning moves batches to it).
        seed: seeds the generator each new iterator draws its workers' base seed from, so
            they are reproducible and do not draw on the global generator augmentation uses.
        collate_fn: how items become a batch (None: PyTorch's stacking).
        persistent: keep the worker processes between iterations (e.g. per validation).
    """
    on_gpu = device.type == "cuda" if device is not None else torch.cuda.is_available()
    return DataLoader(
        dataset,
        batch_size=batch_size,
        collate_fn=collate_fn,
        generator=None if seed is None else torch.Generator().manual_seed(seed),
        num_workers=num_workers,
        pin_memory=on_gpu,
        persistent_workers=persistent and num_workers > 0,
    )
