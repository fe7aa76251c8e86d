"""The data path's throughput: this project's loaders (from the resized cache and from the
original files, with and without Lab on the device) against the published per-sample
approach (:mod:`colorizer.bench.reference`), on the same files, batch size and workers."""

from __future__ import annotations

import math
import os
import statistics
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch.utils.data import DataLoader

from colorizer.bench.reference import PerSampleLabDataset
from colorizer.bench.timing import median_ratio, synchronized_time
from colorizer.color import split_lab
from colorizer.data.base import ImageDataModule, ImageFileDataset
from colorizer.registry import DATA_SOURCES


def data_rates(cfg: DictConfig, datamodule: ImageDataModule, device: torch.device) -> dict:
    """images/s of our data path, from the originals and from the resized cache, and of the
    per-sample reference; same files, batch size and workers, Lab on ``device`` for ours
    (``data_batches=0``: not measured)."""
    if not cfg.data_batches:
        return {}
    if not isinstance(datamodule.train_set, ImageFileDataset):
        skipped = f"needs image files, which data={DATA_SOURCES.name_of(type(datamodule))} has not"
        return {"data_images_per_s": None, "reference_data_images_per_s": None,
                "data_speedup": None, "data_skipped": skipped}  # fmt: skip
    cache = datamodule.resized_cache or str(Path(cfg.paths.output_dir) / "resized_cache")
    # Decoding is what is measured: no decoded image is kept in memory (a small folder would
    # otherwise be decoded once and then only cropped; the end-to-end row shows that).
    originals: ImageDataModule = instantiate(cfg.data, resized_cache=None, memory_cache_mb=0)
    cached: ImageDataModule = instantiate(cfg.data, resized_cache=cache, memory_cache_mb=0)
    originals.setup("fit")
    start = time.perf_counter()
    cached.setup("fit")
    build_seconds = time.perf_counter() - start
    # The reference reads epochs of the same files; enough of them for every worker to be
    # busy, as in a real dataset (ours stream on across epochs by themselves).
    needed = (cfg.warmup + cfg.data_batches) * datamodule.batch_size
    reference_paths = originals.train_set.paths
    reference_paths = reference_paths * math.ceil(needed / len(reference_paths))
    # The published loader's own settings (shuffled, last batch dropped), not ours.
    reference = DataLoader(
        PerSampleLabDataset(reference_paths, datamodule.image_size),
        batch_size=datamodule.batch_size,
        shuffle=True,
        num_workers=datamodule.num_workers,
        persistent_workers=datamodule.num_workers > 0,
        drop_last=True,
    )
    paths = {  # name: (loader, Lab on the device?)
        "data": (cached.train_dataloader(), True),
        # What the workers alone deliver: the data path's rate wherever Lab is nearly free.
        "data_workers": (cached.train_dataloader(), False),
        "data_uncached": (originals.train_dataloader(), True),
        "reference_data": (reference, False),
    }
    runs: dict[str, list[float]] = {name: [] for name in paths}
    threads = torch.get_num_threads()
    main_threads = lab_threads(device, datamodule.num_workers)
    torch.set_num_threads(main_threads)
    try:
        # Interleaved, in alternating order, as for training: the speedups are medians of
        # ratios between runs made side by side.
        for repeat in range(cfg.repeats):
            for name in list(paths) if repeat % 2 == 0 else reversed(paths):
                runs[name].append(loader_rate(*paths[name], device, cfg))
    finally:
        torch.set_num_threads(threads)
        for loader, _ in paths.values():
            getattr(loader, "close", lambda: None)()  # the streams' workers
    reference_runs = runs["reference_data"]
    return {f"{name}_images_per_s": statistics.median(rates) for name, rates in runs.items()} | {
        "data_speedup": median_ratio(runs["data"], reference_runs),
        "data_speedup_uncached": median_ratio(runs["data_uncached"], reference_runs),
        "data_runs_images_per_s": runs["data"],
        "reference_data_runs_images_per_s": reference_runs,
        "data_main_threads": main_threads,
        "resized_cache": cache,
        "resized_cache_setup_s": build_seconds,
    }


def lab_threads(device: torch.device, workers: int) -> int:
    """Threads of the main process while it converts batches to Lab next to ``workers``.

    On a CPU the "device" is the cores the workers decode on: more threads than they leave
    free oversubscribe them (on 2 cores with 2 workers, 2 threads gave 416 images/s and 1
    thread 550 at 256²). On a GPU the main process only launches kernels: left as it is.
    """
    if device.type != "cpu" or workers == 0:
        return torch.get_num_threads()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, (cores or 1) - workers)


def loader_rate(
    loader: DataLoader, lab_on_device: bool, device: torch.device, cfg: DictConfig
) -> float:
    """images/s over ``cfg.data_batches`` batches after ``cfg.warmup`` (epochs repeat)."""

    def batches() -> Iterator[Any]:
        while True:
            yield from loader

    images = 0
    stream = batches()
    for i in range(cfg.warmup + cfg.data_batches):
        if i == cfg.warmup:
            start, images = synchronized_time(device), 0
        batch = next(stream)
        if isinstance(batch, torch.Tensor):  # ours: uint8 images
            images_on_device = batch.to(device, non_blocking=True)
            if lab_on_device:
                split_lab(images_on_device)
            images += batch.shape[0]
        else:  # the reference: (L, ab) float tensors, converted in the workers
            [tensor.to(device, non_blocking=True) for tensor in batch]
            images += batch[0].shape[0]
    return images / (synchronized_time(device) - start)
