"""Steady-state throughput: ``python -m colorizer.bench model=gan data=curated [trainer=gpu]``.

Measures, in one process, with warm-up steps excluded and the median of ``repeats`` runs:

- ``train_images_per_s``: the LightningModule's training step run by a Lightning Trainer
  (both the D and the G step for the GAN), on one real batch of the data reused every step,
  so the data path is not part of it; ``plain_images_per_s``: the same math
  (``training_loss`` / ``optimization_step``) in a plain PyTorch loop, the runs of the two
  interleaved; ``lightning_overhead``: the median over those pairs of plain / Lightning
  throughput (1.0: none).
- ``infer_images_per_s``: Lab split, prediction and reconstruction of a batch, no gradients.
- ``data_images_per_s``: this project's data path (decode and crop uint8 in the workers from
  the resized cache, Lab on the device) and ``reference_data_images_per_s``: the published
  one (PIL, resize and per-sample scikit-image ``rgb2lab`` in the workers), same files, batch
  size and workers; ``data_speedup`` is their ratio. Also: ours from the original files
  (``data_uncached_*``), and the workers alone, without Lab (``data_workers_images_per_s``):
  on a CPU the "device" doing Lab is the same two cores. Needs image files.
- ``video_frames_per_s`` and ``video_flow_frames_per_s``: ``colorizer.colorize`` on a film
  (``video.frames`` frames of ``video.width`` x ``video.height``, a camera pan over one of the
  batch's images): decoding, colorizing at working size ``video.size``, encoding, with
  ``temporal=none`` and ``temporal=flow``; the median of ``video.repeats`` runs of each,
  interleaved.
- on a GPU: the FLOPs of one training step (``torch.utils.flop_counter``), the achieved
  FLOP/s and their fraction of the device's bf16 peak (``peak_tflops``, known GPUs only).

Writes ``bench.json`` to the run directory and prints a table.
"""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from rich.console import Console
from rich.table import Table
from torch.utils.data import DataLoader, IterableDataset
from torch.utils.flop_counter import FlopCounterMode

from colorizer.cli import run_app
from colorizer.color import merge_lab, split_lab
from colorizer.data.base import ImageDataModule, ImageFileDataset
from colorizer.data.reference import PerSampleLabDataset
from colorizer.errors import require_int
from colorizer.inference import TorchNetwork
from colorizer.models import ColorizationModule
from colorizer.registry import DATA_SOURCES, MODELS
from colorizer.video import FrameColorizer, colorize_video, write_video
from colorizer.video_eval import camera_move

# Dense bf16 tensor-core peaks (TFLOP/s, no sparsity) from the vendors' data sheets.
BF16_PEAK_TFLOPS = {"H100 SXM": 989.4, "H100 PCIe": 756.0, "H100": 989.4, "H200": 989.4}
BF16_PEAK_TFLOPS |= {"A100": 312.0, "L40S": 362.0, "L4": 121.0}


def bench(cfg: DictConfig) -> dict[str, Any]:
    """Run every measurement of ``cfg``; returns what bench.json holds."""
    for key in ("warmup", "steps", "repeats", "data_batches"):
        require_int(key, cfg[key])
    L.seed_everything(cfg.seed, verbose=False)
    datamodule: ImageDataModule = instantiate(cfg.data)
    datamodule.prepare_data()
    datamodule.setup("fit")
    batch = next(iter(datamodule.train_dataloader()))
    probe = _make_model(cfg)
    trainer = _trainer(cfg, batches=1)  # resolves accelerator and precision as a real run would
    device = trainer.strategy.root_device
    bf16 = "bf16" in str(trainer.precision)

    lightning_runs, plain_runs = [], []
    trainer_log = logging.getLogger("lightning.pytorch")
    level = trainer_log.level
    trainer_log.setLevel(logging.WARNING)  # not a "GPU available" block per timed run
    try:
        # Interleaved pairs, in alternating order, so that drifts in the machine's speed (a
        # shared VM's neighbours, clocks) hit both loops alike; the overhead is the median of
        # the pairs' ratios.
        for repeat in range(cfg.repeats):
            for loop in ("plain", "lightning") if repeat % 2 == 0 else ("lightning", "plain"):
                if loop == "plain":
                    plain_runs.append(_plain_run(cfg, batch, device, bf16))
                else:
                    lightning_runs.append(_lightning_run(cfg, batch))
    finally:
        trainer_log.setLevel(level)
    train_rate, plain_rate = statistics.median(lightning_runs), statistics.median(plain_runs)
    result: dict[str, Any] = {
        "model": MODELS.name_or_fail(probe),
        "data": DATA_SOURCES.name_or_fail(datamodule),
        "device": _device_name(device),
        "precision": str(trainer.precision),
        "compile": bool(cfg.compile),
        "channels_last": bool(cfg.channels_last),
        "image_size": int(batch.shape[-1]),
        "batch_size": int(batch.shape[0]),
        "num_workers": datamodule.num_workers,
        "warmup": cfg.warmup,
        "steps": cfg.steps,
        "repeats": cfg.repeats,
        "train_images_per_s": train_rate,
        "plain_images_per_s": plain_rate,
        "lightning_overhead": _median_ratio(plain_runs, lightning_runs),
        "train_runs_images_per_s": lightning_runs,
        "plain_runs_images_per_s": plain_runs,
        "infer_images_per_s": _inference_rate(cfg, probe, batch, device, bf16),
        **_data_rates(cfg, datamodule, device),
        **_video_rates(cfg, probe, batch, device, bf16),
        **_flops(cfg, batch, device, bf16, train_rate),
        "torch": torch.__version__,
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} "
        f"threads",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    output_dir = Path(cfg.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "bench.json").write_text(json.dumps(result, indent=2) + "\n")
    _print(result, output_dir / "bench.json")
    return result


def _make_model(cfg: DictConfig) -> ColorizationModule:
    model: ColorizationModule = instantiate(cfg.model)
    # Speed does not depend on the values of pretrained weights: skip looking for them.
    model.weight_sources = {name: "not loaded (benchmark)" for name in model.pretrained_parts()}
    model.apply_speed_options(compile=bool(cfg.compile), channels_last=bool(cfg.channels_last))
    return model


def _trainer(cfg: DictConfig, batches: int, callbacks: list | None = None) -> L.Trainer:
    return instantiate(
        cfg.trainer,
        max_steps=-1,
        max_epochs=1,
        limit_train_batches=batches,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        val_check_interval=None,
        check_val_every_n_epoch=1,
        logger=False,
        callbacks=callbacks or [],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=cfg.output_dir,
    )


class SameBatch(IterableDataset):
    """Yields one batch ``n`` times: the model's step is timed, not the data path."""

    def __init__(self, batch: torch.Tensor, n: int):
        self.batch, self.n = batch, n

    def __iter__(self) -> Iterator[torch.Tensor]:
        return (self.batch for _ in range(self.n))


class StepTimer(L.Callback):
    """Times the training steps after ``warmup`` of them: images/s in ``rate``."""

    def __init__(self, warmup: int, steps: int, batch_size: int):
        self.warmup, self.steps, self.batch_size = warmup, steps, batch_size
        self.start = self.rate = 0.0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if batch_idx == self.warmup - 1:
            self.start = _synchronized_time(pl_module.device)
        elif batch_idx == self.warmup + self.steps - 1:
            seconds = _synchronized_time(pl_module.device) - self.start
            self.rate = self.steps * self.batch_size / seconds


def _lightning_run(cfg: DictConfig, batch: torch.Tensor) -> float:
    timer = StepTimer(cfg.warmup, cfg.steps, batch.shape[0])
    trainer = _trainer(cfg, cfg.warmup + cfg.steps, callbacks=[timer])
    loader = DataLoader(SameBatch(batch, cfg.warmup + cfg.steps), batch_size=None)
    trainer.fit(_make_model(cfg), train_dataloaders=loader)
    return timer.rate


def _plain_run(cfg: DictConfig, batch: torch.Tensor, device: torch.device, bf16: bool) -> float:
    """The training math without Lightning: same model, optimizers, batches and precision."""
    model = _make_model(cfg).to(device).train()
    optimizers = model.configure_optimizers()
    optimizers = optimizers if isinstance(optimizers, list | tuple) else [optimizers]
    step = _plain_step(model, optimizers)
    loader = DataLoader(SameBatch(batch, cfg.warmup + cfg.steps), batch_size=None)
    start = 0.0
    for i, images in enumerate(loader):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            step(images.to(device, non_blocking=True))
        if i == cfg.warmup - 1:
            start = _synchronized_time(device)
    return cfg.steps * batch.shape[0] / (_synchronized_time(device) - start)


def _plain_step(
    model: ColorizationModule, optimizers: list[torch.optim.Optimizer]
) -> Callable[[torch.Tensor], Any]:
    if not model.automatic_optimization:  # the GAN: its own D and G steps
        return lambda images: model.optimization_step(images, *optimizers, torch.Tensor.backward)
    (optimizer,) = optimizers

    def step(images: torch.Tensor) -> None:
        optimizer.zero_grad(set_to_none=True)
        model.training_loss(images).backward()
        optimizer.step()

    return step


@torch.inference_mode()
def _inference_rate(
    cfg: DictConfig, model: ColorizationModule, batch: torch.Tensor, device: torch.device,
    bf16: bool,
) -> float:  # fmt: skip
    model = model.to(device).eval()
    images = batch.to(device)

    def predict() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            l_norm, _ = split_lab(images)
            merge_lab(l_norm, model.predict_ab(l_norm))

    rates = []
    for _ in range(cfg.repeats):
        for _ in range(cfg.warmup):
            predict()
        start = _synchronized_time(device)
        for _ in range(cfg.steps):
            predict()
        rates.append(cfg.steps * batch.shape[0] / (_synchronized_time(device) - start))
    return statistics.median(rates)


def _data_rates(cfg: DictConfig, datamodule: ImageDataModule, device: torch.device) -> dict:
    """images/s of our data path, from the originals and from the resized cache, and of the
    per-sample reference; same files, batch size and workers, Lab on ``device`` for ours."""
    if not isinstance(datamodule.train_set, ImageFileDataset):
        skipped = f"needs image files, which data={DATA_SOURCES.name_of(type(datamodule))} has not"
        return {"data_images_per_s": None, "reference_data_images_per_s": None,
                "data_speedup": None, "data_skipped": skipped}  # fmt: skip
    cache = datamodule.resized_cache or str(Path(cfg.output_dir) / "resized_cache")
    originals: ImageDataModule = instantiate(cfg.data, resized_cache=None)
    cached: ImageDataModule = instantiate(cfg.data, resized_cache=cache)
    originals.setup("fit")
    start = time.perf_counter()
    cached.setup("fit")
    build_seconds = time.perf_counter() - start
    # Enough files per epoch for every worker to be busy, as in a real dataset: a tiny
    # folder repeats (the same for every path measured).
    needed = (cfg.warmup + cfg.data_batches) * datamodule.batch_size
    for module in (originals, cached):
        paths = module.train_set.paths
        module.train_set.paths = paths * math.ceil(needed / len(paths))
    reference = DataLoader(
        PerSampleLabDataset(originals.train_set.paths, datamodule.image_size),
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
    main_threads = _main_threads(device, datamodule.num_workers)
    torch.set_num_threads(main_threads)
    try:
        # Interleaved, in alternating order, as for training: the speedups are medians of
        # ratios between runs made side by side.
        for repeat in range(cfg.repeats):
            for name in list(paths) if repeat % 2 == 0 else reversed(paths):
                runs[name].append(_loader_rate(*paths[name], device, cfg))
    finally:
        torch.set_num_threads(threads)
    reference_runs = runs["reference_data"]
    return {f"{name}_images_per_s": statistics.median(rates) for name, rates in runs.items()} | {
        "data_speedup": _median_ratio(runs["data"], reference_runs),
        "data_speedup_uncached": _median_ratio(runs["data_uncached"], reference_runs),
        "data_runs_images_per_s": runs["data"],
        "reference_data_runs_images_per_s": reference_runs,
        "data_main_threads": main_threads,
        "resized_cache": cache,
        "resized_cache_setup_s": build_seconds,
    }


def _main_threads(device: torch.device, workers: int) -> int:
    """Threads of the main process while it converts batches to Lab next to ``workers``.

    On a CPU the "device" is the cores the workers decode on: more threads than they leave
    free oversubscribe them (on 2 cores with 2 workers, 2 threads gave 416 images/s and 1
    thread 550 at 256²). On a GPU the main process only launches kernels: left as it is.
    """
    if device.type != "cpu" or workers == 0:
        return torch.get_num_threads()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, (cores or 1) - workers)


def _median_ratio(ours: list[float], theirs: list[float]) -> float:
    return statistics.median(a / b for a, b in zip(ours, theirs, strict=True))


def _loader_rate(
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
            start, images = _synchronized_time(device), 0
        batch = next(stream)
        if isinstance(batch, torch.Tensor):  # ours: uint8 images
            images_on_device = batch.to(device, non_blocking=True)
            if lab_on_device:
                split_lab(images_on_device)
            images += batch.shape[0]
        else:  # the reference: (L, ab) float tensors, converted in the workers
            [tensor.to(device, non_blocking=True) for tensor in batch]
            images += batch[0].shape[0]
    return images / (_synchronized_time(device) - start)


def _video_rates(
    cfg: DictConfig, model: ColorizationModule, batch: torch.Tensor, device: torch.device,
    bf16: bool,
) -> dict[str, Any]:  # fmt: skip
    """frames/s of colorize on a film, per frame and with temporal=flow (``video.frames=0``:
    not measured)."""
    if not cfg.video.frames:
        return {}
    network = TorchNetwork(model, device, bf16=bf16)
    shape = (cfg.video.height, cfg.video.width)
    film = Path(cfg.output_dir) / "bench_film.mp4"
    film.parent.mkdir(parents=True, exist_ok=True)
    write_video(film, camera_move(batch[0], cfg.video.frames, shape, pan=(2.0, 0.5)))
    runs: dict[str, list[float]] = {"none": [], "flow": []}
    for repeat in range(cfg.video.repeats):
        for temporal in list(runs) if repeat % 2 == 0 else reversed(runs):
            colorizer = FrameColorizer(network, cfg.video.size, temporal)
            colorizer([batch[0]])  # warm-up, outside the timing
            start = _synchronized_time(device)
            frames = colorize_video(film, film.with_stem("bench_out"), colorizer,
                                    cfg.video.batch_size)  # fmt: skip
            runs[temporal].append(frames / (_synchronized_time(device) - start))
    return {
        "video_frames_per_s": statistics.median(runs["none"]),
        "video_flow_frames_per_s": statistics.median(runs["flow"]),
        "video_runs_frames_per_s": runs,
        "video_shape": f"{cfg.video.width}x{cfg.video.height}, {cfg.video.frames} frames",
    }


def _flops(
    cfg: DictConfig, batch: torch.Tensor, device: torch.device, bf16: bool, train_rate: float
) -> dict[str, Any]:
    """FLOPs of one training step and the achieved fraction of the bf16 peak (GPU only)."""
    if device.type != "cuda":
        return {}
    model = _make_model(cfg).to(device).train()
    optimizers = model.configure_optimizers()
    optimizers = optimizers if isinstance(optimizers, list | tuple) else [optimizers]
    counter = FlopCounterMode(display=False)
    with counter, torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        _plain_step(model, optimizers)(batch.to(device))
    step_flops = counter.get_total_flops()
    achieved = step_flops * train_rate / batch.shape[0]
    name = torch.cuda.get_device_name(device)
    peak = next((tflops for key, tflops in BF16_PEAK_TFLOPS.items() if key in name), None)
    return {
        "flops_per_train_step": step_flops,
        "achieved_tflops": achieved / 1e12,
        "peak_bf16_tflops": peak,
        "flop_fraction": achieved / (peak * 1e12) if peak else None,
    }


def _synchronized_time(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()})"


def _print(result: dict[str, Any], path: Path) -> None:
    title = f"{result['model']} on {result['data']}, {result['device']}, {result['precision']}"
    table = Table(title=f"{title}, {result['image_size']}², batch {result['batch_size']}")
    table.add_column("measure")
    table.add_column("value", justify="right")
    for key, value in result.items():
        if isinstance(value, float):
            table.add_row(key, f"{value:,.3f}" if abs(value) < 100 else f"{value:,.1f}")
    Console().print(table, f"Wrote {path}", sep="\n")


def main() -> None:
    run_app(bench, config_name="bench")


if __name__ == "__main__":
    main()
