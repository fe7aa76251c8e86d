"""Film colorization throughput: ``colorizer.colorize``'s video path (decode, colorize at the
working size, encode) on a generated camera pan, with ``temporal=none`` and ``temporal=flow``."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from colorizer.bench.timing import synchronized_time
from colorizer.inference import TorchNetwork
from colorizer.models import ColorizationModule
from colorizer.video import FrameColorizer, colorize_video, write_video
from colorizer.video_eval import camera_move


def video_rates(
    cfg: DictConfig, model: ColorizationModule, batch: torch.Tensor, device: torch.device,
    bf16: bool,
) -> dict[str, Any]:  # fmt: skip
    """frames/s of colorize on a film, per frame and with temporal=flow (``video.frames=0``:
    not measured)."""
    if not cfg.video.frames:
        return {}
    network = TorchNetwork(model, device, bf16=bf16)
    size = network.spec.working_size(cfg.video.size, "video.size")
    shape = (cfg.video.height, cfg.video.width)
    film = Path(cfg.paths.output_dir) / "bench_film.mp4"
    film.parent.mkdir(parents=True, exist_ok=True)
    write_video(film, camera_move(batch[0], cfg.video.frames, shape, pan=(2.0, 0.5)))
    runs: dict[str, list[float]] = {"none": [], "flow": []}
    for repeat in range(cfg.video.repeats):
        for temporal in list(runs) if repeat % 2 == 0 else reversed(runs):
            colorizer = FrameColorizer(network, size, temporal)
            colorizer([batch[0]])  # warm-up, outside the timing
            start = synchronized_time(device)
            frames = colorize_video(film, film.with_stem("bench_out"), colorizer,
                                    cfg.video.batch_size)  # fmt: skip
            runs[temporal].append(frames / (synchronized_time(device) - start))
    return {
        "video_frames_per_s": statistics.median(runs["none"]),
        "video_flow_frames_per_s": statistics.median(runs["flow"]),
        "video_runs_frames_per_s": runs,
        "video_shape": f"{cfg.video.width}x{cfg.video.height}, {cfg.video.frames} frames",
        "video_size": size,
    }
