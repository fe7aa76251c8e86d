"""Training and inference throughput: a Lightning Trainer against the same step in a plain
PyTorch loop, on one batch reused every step (the data path is measured apart), and on a GPU
the FLOPs of a step against the device's bf16 peak."""

from __future__ import annotations

import statistics
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.fabric.utilities.throughput import get_available_flops
from omegaconf import DictConfig
from torch.utils.data import DataLoader, IterableDataset
from torch.utils.flop_counter import FlopCounterMode

from colorizer.bench.timing import synchronized_time
from colorizer.color import merge_lab, split_lab
from colorizer.models import ColorizationModule

# Dense bf16 tensor-core peaks (TFLOP/s, no sparsity) from the vendors' data sheets.
# Dense bf16 TFLOP/s of whole device names that Lightning's table lacks (the H200 as CUDA names
# it) or misreads (Lightning 2.6.6 takes any name containing "L4" for the L4), from NVIDIA's
# data sheets; every other device comes from Lightning's table.
BF16_PEAK_TFLOPS = {"NVIDIA H200": 989.4, "NVIDIA L40": 181.0, "NVIDIA L40S": 362.0}


# Lightning's advice that does not apply to a timed loop over one batch in memory.
BY_DESIGN = (
    r"You defined a `validation_step` but have no `val_dataloader`",
    r"The 'train_dataloader' does not have many workers",
)


def make_model(cfg: DictConfig) -> ColorizationModule:
    model: ColorizationModule = instantiate(cfg.model)
    # Speed does not depend on the values of pretrained weights: skip looking for them.
    model.weight_sources = {name: "not loaded (benchmark)" for name in model.pretrained_parts()}
    model.apply_speed_options(compile=bool(cfg.compile), channels_last=bool(cfg.channels_last))
    return model


def bench_trainer(cfg: DictConfig, batches: int, callbacks: list | None = None) -> L.Trainer:
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
        default_root_dir=cfg.paths.output_dir,
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
            self.start = synchronized_time(pl_module.device)
        elif batch_idx == self.warmup + self.steps - 1:
            seconds = synchronized_time(pl_module.device) - self.start
            self.rate = self.steps * self.batch_size / seconds


def lightning_loop_rate(cfg: DictConfig, batch: torch.Tensor) -> float:
    timer = StepTimer(cfg.warmup, cfg.steps, batch.shape[0])
    trainer = bench_trainer(cfg, cfg.warmup + cfg.steps, callbacks=[timer])
    loader = DataLoader(SameBatch(batch, cfg.warmup + cfg.steps), batch_size=None)
    with warnings.catch_warnings():
        for message in BY_DESIGN:
            warnings.filterwarnings("ignore", message)
        trainer.fit(make_model(cfg), train_dataloaders=loader)
    return timer.rate


def plain_loop_rate(
    cfg: DictConfig, batch: torch.Tensor, device: torch.device, bf16: bool
) -> float:
    """The training math without Lightning: same model, optimizers, batches and precision."""
    model = make_model(cfg).to(device).train()
    optimizers = model.configure_optimizers()
    optimizers = optimizers if isinstance(optimizers, list | tuple) else [optimizers]
    step = plain_step(model, optimizers)
    loader = DataLoader(SameBatch(batch, cfg.warmup + cfg.steps), batch_size=None)
    start = 0.0
    for i, images in enumerate(loader):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            step(images.to(device, non_blocking=True))
        if i == cfg.warmup - 1:
            start = synchronized_time(device)
    return cfg.steps * batch.shape[0] / (synchronized_time(device) - start)


def plain_step(
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
def inference_rate(
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
        start = synchronized_time(device)
        for _ in range(cfg.steps):
            predict()
        rates.append(cfg.steps * batch.shape[0] / (synchronized_time(device) - start))
    return statistics.median(rates)


def peak_bf16_tflops(device: torch.device) -> float | None:
    """The GPU's dense bf16 peak in TFLOP/s: ours for the names listed above, else
    Lightning's table; None for a device neither knows."""
    name = torch.cuda.get_device_name(device)
    if name in BF16_PEAK_TFLOPS:
        return BF16_PEAK_TFLOPS[name]
    with warnings.catch_warnings():  # an unknown device: no flop fraction, not a warning
        warnings.simplefilter("ignore")
        available = get_available_flops(device, torch.bfloat16)
    return available / 1e12 if available else None


def flops(
    cfg: DictConfig, batch: torch.Tensor, device: torch.device, bf16: bool, train_rate: float
) -> dict[str, Any]:
    """FLOPs of one training step and the achieved fraction of the bf16 peak (GPU only)."""
    if device.type != "cuda":
        return {}
    model = make_model(cfg).to(device).train()
    optimizers = model.configure_optimizers()
    optimizers = optimizers if isinstance(optimizers, list | tuple) else [optimizers]
    counter = FlopCounterMode(display=False)
    with counter, torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        plain_step(model, optimizers)(batch.to(device))
    step_flops = counter.get_total_flops()
    achieved = step_flops * train_rate / batch.shape[0]
    peak = peak_bf16_tflops(device)
    return {
        "flops_per_train_step": step_flops,
        "achieved_tflops": achieved / 1e12,
        "peak_bf16_tflops": peak,
        "flop_fraction": achieved / (peak * 1e12) if peak else None,
    }
