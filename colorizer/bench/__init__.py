"""Steady-state throughput: ``python -m colorizer.bench model=gan data=curated [trainer=gpu]``.

Measures, in one process, with warm-up steps excluded and the median of ``repeats`` runs:

- ``end_to_end_images_per_s``, the headline: a real ``colorizer.run`` training run on the same
  settings (files read by the data source, every callback, checkpoints, the logger), its own
  steady-state images/s; ``run_efficiency`` = end to end / the step alone (below), and the
  share of the run spent waiting for data (:mod:`~colorizer.bench.end_to_end`). The rows
  below time one piece each: they say where the time goes, not how fast a run is.
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

Writes ``bench.json`` to the run directory and prints a table. The measurements live in
:mod:`~colorizer.bench.training` (training, inference, FLOPs) and
:mod:`~colorizer.bench.data_path` (the loaders, against :mod:`~colorizer.bench.reference`) and
:mod:`~colorizer.bench.video` (films).
"""

from __future__ import annotations

import logging
import platform
import statistics
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from colorizer.bench.data_path import data_rates
from colorizer.bench.end_to_end import end_to_end_rates
from colorizer.bench.timing import device_name, median_ratio
from colorizer.bench.training import (
    bench_trainer,
    flops,
    inference_rate,
    lightning_loop_rate,
    make_model,
    plain_loop_rate,
)
from colorizer.bench.video import video_rates
from colorizer.cli import run_app
from colorizer.data.base import ImageDataModule
from colorizer.errors import require_int
from colorizer.registry import DATA_SOURCES, MODELS
from colorizer.report import ResultTable, write_report


def bench(cfg: DictConfig) -> dict[str, Any]:
    """Run every measurement of ``cfg``; returns what bench.json holds."""
    for key in ("warmup", "steps", "repeats"):
        require_int(key, cfg[key])
    require_int("data_batches", cfg.data_batches, least=0)
    L.seed_everything(cfg.seed, verbose=False)
    datamodule: ImageDataModule = instantiate(cfg.data)
    probe = make_model(cfg)
    probe.set_training_size(datamodule.image_size)
    datamodule.prepare_data()
    datamodule.setup("fit")
    batches = iter(datamodule.train_dataloader())
    batch = next(batches)
    getattr(batches, "close", lambda: None)()  # its workers would sit through every timed run
    trainer = bench_trainer(
        cfg, batches=1
    )  # resolves accelerator and precision as a real run would
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
                    plain_runs.append(plain_loop_rate(cfg, batch, device, bf16))
                else:
                    lightning_runs.append(lightning_loop_rate(cfg, batch))
    finally:
        trainer_log.setLevel(level)
    train_rate, plain_rate = statistics.median(lightning_runs), statistics.median(plain_runs)
    result: dict[str, Any] = {
        "model": MODELS.name_or_fail(probe),
        "data": DATA_SOURCES.name_or_fail(datamodule),
        "device": device_name(device),
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
        "lightning_overhead": median_ratio(plain_runs, lightning_runs),
        "train_runs_images_per_s": lightning_runs,
        "plain_runs_images_per_s": plain_runs,
        "infer_images_per_s": inference_rate(cfg, probe, batch, device, bf16),
        **data_rates(cfg, datamodule, device),
        **video_rates(cfg, probe, batch, device, bf16),
        **flops(cfg, batch, device, bf16, train_rate),
        **end_to_end_rates(cfg, train_rate),
        "torch": torch.__version__,
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} "
        f"threads",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    write_report(Path(cfg.paths.output_dir), result, json_name="bench.json", table=_table(result))
    return result


def _table(result: dict[str, Any]) -> ResultTable:
    title = f"{result['model']} on {result['data']}, {result['device']}, {result['precision']}"
    table = ResultTable(f"{title}, {result['image_size']}², batch {result['batch_size']}",
                        ["measure", "value"])  # fmt: skip
    for key, value in result.items():
        if isinstance(value, float):
            table.add_row(key, f"{value:,.3f}" if abs(value) < 100 else f"{value:,.1f}")
    return table


def main() -> None:
    run_app(bench, config_name="bench")


if __name__ == "__main__":
    main()
