"""Video evaluation: ``python -m colorizer.evaluate ckpt_path=X videos=DIR``.

Colour videos are the truth: each is colorized from its own L twice, frame by frame
(``temporal=none``) and stabilised (``temporal=flow``), exactly as ``colorizer.colorize``
writes them (full resolution, the L kept) and scored next to the gray baseline (ab = 0):

- ``psnr``: of each output frame against the true frame, sRGB in [0, 1], averaged over frames;
- ``warping_error``: flicker, the mean ``|Δab|`` between each frame's chroma and the previous
  frame's warped onto it by the optical flow of the clip's own L, over the pixels the flow
  follows, pairs across a shot cut left out (``colorizer.flow.FlickerMeter``). The truth's
  own warping error (real colour changes too, and the flow is not perfect) is the floor that
  a colorization as stable as the real video would reach; the gray baseline's is ~0 (no colour).

Writes ``metrics.json`` (``video/psnr``, ``video/flow_psnr``, ``video/gray_psnr``,
``video/warping_error``, ...) and ``report.md`` into the run directory.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from rich.console import Console

from colorizer.color import rgb_to_lab
from colorizer.console import image_progress
from colorizer.data.images import list_image_files
from colorizer.errors import ConfigError, DataError, require_int
from colorizer.flow import FlickerMeter, lightness_u8
from colorizer.inference import (
    full_lightness,
    merge_full_resolution,
    open_network,
    resize_planes,
    resolve_device,
)
from colorizer.metrics import psnr_per_image
from colorizer.models.spec import check_size_option
from colorizer.photo_files import VIDEO_EXTENSIONS
from colorizer.report import ResultTable, cell, markdown_report, write_report
from colorizer.video import FrameColorizer, VideoError, decode_frames

log = logging.getLogger(__name__)

# Row name -> (metrics.json prefix, label of the report's row).
ROWS = {
    "model": ("", "model, per frame (temporal=none)"),
    "flow": ("flow_", "model, temporal=flow"),
}
ROWS |= {"gray": ("gray_", "gray baseline"), "truth": ("truth_", "truth (the real video)")}
DEFINITIONS = (
    "PSNR: each output frame vs the true frame, sRGB in [0, 1] (data_range 1), averaged over "
    "frames. Warping error: mean |Δab| (CIE ab units, Euclidean) between each frame's chroma "
    "and the previous frame's warped onto it by the DIS optical flow of the clip's L, over "
    "the pixels the flow follows (warped L within 4 L units), averaged over frame pairs "
    "within a shot (pairs across a detected cut are left out)."
)


def evaluate_videos(cfg: DictConfig) -> dict[str, Any]:
    """Score ``cfg.ckpt_path`` on the colour videos ``cfg.videos`` names; returns metrics.json."""
    require_int("batch_size", cfg.batch_size)
    check_size_option("size", cfg.size)
    device = resolve_device(str(cfg.device))
    network = open_network(str(cfg.ckpt_path), "auto", device)
    size = network.spec.working_size(cfg.size)
    paths = video_files(str(cfg.videos))
    psnr: dict[str, list[float]] = {name: [] for name in ROWS if name != "truth"}
    flicker: dict[str, list[float]] = {name: [] for name in ROWS}
    skipped, cuts, pairs = {}, {}, 0
    console = Console()
    with image_progress(console) as bar:
        task = bar.add_task("evaluating videos", total=len(paths), unit="videos")
        for path in paths:
            try:
                frames = decode_frames(path)
            except VideoError as err:
                skipped[str(path)] = err.reason
                continue
            meter = score_clip(network, frames, size, cfg.batch_size, psnr)
            for name, error in meter.errors().items():
                flicker[name].append(error)
            cuts[str(path)], pairs = meter.cuts, pairs + meter.pairs
            bar.advance(task)
    if skipped:
        log.warning("skipped %d unreadable videos: %s", len(skipped), skipped)
    if not cuts:
        raise DataError(f"videos={cfg.videos} holds no readable video: {skipped}")
    summary: dict[str, Any] = {
        "model": network.name,
        "checkpoint": str(Path(str(cfg.ckpt_path)).resolve()),
        "videos": str(cfg.videos),
        "size": size,
        "num_videos": len(cuts),
        "num_frames": len(psnr["model"]),
        "num_frame_pairs": pairs,
        "cuts": cuts,
        "skipped_videos": skipped,
        "device": str(device),
    }
    for name, (prefix, _) in ROWS.items():
        if name in psnr:
            summary[f"video/{prefix}psnr"] = float(np.mean(psnr[name]))
        summary[f"video/{prefix}warping_error"] = float(np.mean(flicker[name]))
    table = video_table(summary)
    write_report(Path(str(cfg.paths.output_dir)), summary, table=table,
                 markdown=video_report(summary, table), console=console)  # fmt: skip
    return summary


def video_files(pattern: str) -> list[Path]:
    """A video file, or every video file under a folder (recursively, sorted)."""
    path = Path(pattern)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise ConfigError(f"videos={pattern} does not exist: pass a video file or a folder")
    files = list_image_files(path, VIDEO_EXTENSIONS)
    if not files:
        kinds = " ".join(sorted(VIDEO_EXTENSIONS))
        raise ConfigError(f"videos={pattern} holds no video files ({kinds})")
    return files


def score_clip(
    network: Any, frames: list[torch.Tensor], size: int, batch_size: int,
    psnr: dict[str, list[float]],
) -> FlickerMeter:  # fmt: skip
    """Colorize one clip (uint8 ``[3, H, W]`` frames, the truth) per frame, with flow and as
    the gray baseline; append each output frame's PSNR to ``psnr[row]``; returns the clip's
    ``FlickerMeter``."""
    colorizers = {"model": FrameColorizer(network, size, "none")}
    colorizers["flow"] = FrameColorizer(network, size, "flow")
    meter = FlickerMeter()
    for start in range(0, len(frames), batch_size):
        truth = frames[start : start + batch_size]
        (lightness,) = full_lightness([torch.stack(truth)], network.device)
        outputs = {name: colorizer(truth) for name, colorizer in colorizers.items()}
        no_colour = torch.zeros_like(lightness).expand(-1, 2, -1, -1)
        outputs["gray"] = list(merge_full_resolution(lightness, no_colour))
        for name in psnr:
            scores = psnr_per_image(torch.stack(outputs[name]) / 255.0, torch.stack(truth) / 255.0)
            psnr[name].extend(scores.tolist())
        outputs["truth"] = truth
        for i, l_full in enumerate(lightness.split(1)):
            chroma = {name: chroma_of(frames_out[i]) for name, frames_out in outputs.items()}
            meter.update(lightness_u8(l_full), chroma)
    return meter


def chroma_of(image: torch.Tensor) -> np.ndarray:
    """uint8 sRGB ``[3, H, W]`` -> CIE ab float32 ``[H, W, 2]`` (ab units)."""
    return np.ascontiguousarray(rgb_to_lab(image[None])[0, 1:].permute(1, 2, 0).cpu().numpy())


def video_table(summary: dict[str, Any]) -> ResultTable:
    """Per frame, temporal=flow, gray baseline and truth: PSNR and warping error."""
    table = ResultTable(f"{summary['num_videos']} videos, {summary['num_frames']} frames",
                        ["", "PSNR (dB)", "warping error"], caption=DEFINITIONS)  # fmt: skip
    for prefix, label in ROWS.values():
        psnr = summary.get(f"video/{prefix}psnr")
        table.add_row(label, cell(psnr, 2), cell(summary[f"video/{prefix}warping_error"], 3))
    return table


def video_report(summary: dict[str, Any], table: ResultTable) -> str:
    """report.md: the table and the definitions."""
    return markdown_report(
        f"{summary['model']}: flicker and PSNR on {summary['num_videos']} videos",
        f"Checkpoint `{summary['checkpoint']}`; {summary['num_frames']} frames, "
        f"{summary['num_frame_pairs']} frame pairs within shots; working size {summary['size']}.",
        table,
        [DEFINITIONS],
    )


def camera_move(
    photo: torch.Tensor, frames: int, shape: tuple[int, int],
    pan: tuple[float, float] = (0.0, 0.0), zoom: float = 1.0,
) -> list[torch.Tensor]:  # fmt: skip
    """A clip filmed over a still photograph with a known camera motion.

    ``photo``: uint8 ``[3, H, W]``. Frame i shows the window of ``shape`` (h, w) output pixels
    centred on the photo's centre moved by ``i * pan`` (x, y) output pixels, magnified
    ``zoom ** i`` times; sub-pixel positions are sampled bilinearly from the photo shrunk
    (antialiased) to twice the window's scale, so the photo must be large enough.
    Returns uint8 ``[3, h, w]`` frames.
    """
    height, width = shape
    scale = 2 * max(height / photo.shape[1], width / photo.shape[2])
    source_shape = (round(photo.shape[1] * scale), round(photo.shape[2] * scale))
    source = resize_planes(photo[None].float(), source_shape)
    clip = []
    for i in range(frames):
        magnification = zoom**i
        # affine_grid's output covers [-1, 1]; the window is a fraction of the source.
        sx, sy = width / source_shape[1] / magnification, height / source_shape[0] / magnification
        tx, ty = 2 * i * pan[0] / source_shape[1], 2 * i * pan[1] / source_shape[0]
        theta = torch.tensor([[[sx, 0.0, tx], [0.0, sy, ty]]])
        grid = F.affine_grid(theta, [1, 3, height, width], align_corners=False)
        frame = F.grid_sample(source, grid, mode="bilinear", align_corners=False)
        clip.append(frame[0].round().clamp(0, 255).to(torch.uint8))
    return clip
