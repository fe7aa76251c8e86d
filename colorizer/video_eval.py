"""Video evaluation: ``python -m colorizer.evaluate ckpt_path=X videos=DIR``.

Colour videos are the truth: each is colorized from its own L twice, frame by frame
(``temporal=none``) and stabilised (``temporal=flow``), and made gray (ab = 0), each written
to a file exactly as ``colorizer.colorize`` writes it (full resolution, the L kept, encoded)
and decoded again; the scores are of what a viewer would see:

- ``psnr``: of each output frame against the true frame, sRGB in [0, 1], averaged over frames;
- ``warping_error``: flicker, Lai et al.'s (2018) warping error (``colorizer.warping_error``):
  the squared RGB difference between each frame and the next warped back onto it by the
  Farneback optical flow of the clip's L, over the pixels that flow follows both ways;
- ``cf`` and ``warping_error_per_cf``: the output's colourfulness (Hasler & Süsstrunk, as for
  photos) and the warping error (x 1000) per unit of it. A dull colorization flickers little
  because it has little colour to flicker with; this ratio does not reward that.

The truth's own warping error (real changes, the flow's errors, the codec) is what a
colorization as stable as the real video would reach.

Writes ``metrics.json`` (``video/psnr``, ``video/flow_psnr``, ``video/gray_psnr``,
``video/warping_error``, ``video/flow_warping_error_per_cf``, ...) and ``report.md`` into
the run directory.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
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
from colorizer.flow import lightness_u8
from colorizer.inference import (
    full_lightness,
    merge_full_resolution,
    open_network,
    resize_planes,
    resolve_device,
)
from colorizer.metrics import colourfulness, psnr_per_image
from colorizer.models.spec import check_size_option
from colorizer.photo_files import VIDEO_EXTENSIONS
from colorizer.report import ResultTable, cell, markdown_report, write_report
from colorizer.video import FrameColorizer, VideoError, colorize_video, decode_frames
from colorizer.warping_error import WarpingError

log = logging.getLogger(__name__)

# Row name -> (metrics.json prefix, label of the report's row).
ROWS = {
    "model": ("", "model, per frame (temporal=none)"),
    "flow": ("flow_", "model, temporal=flow"),
}
ROWS |= {"gray": ("gray_", "gray baseline"), "truth": ("truth_", "truth (the real video)")}
DEFINITIONS = (
    "Every output is scored as written (encoded) and decoded. PSNR: each output frame vs the "
    "true frame, sRGB in [0, 1] (data_range 1), averaged over frames. Warping error (Lai et "
    "al. 2018), x 10^-3: the squared RGB difference (sRGB in [0, 1], summed over channels) "
    "between each frame and the next warped onto it by the Farneback optical flow of the "
    "clip's L, over the pixels whose flow is forward-backward consistent, averaged over frame "
    "pairs within a shot (pairs across a detected cut are left out). CF: colourfulness "
    "(Hasler & Süsstrunk, 0-255 scale); per CF: the warping error (x 10^-3) divided by it."
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
    colour: dict[str, list[float]] = {name: [] for name in ROWS}
    flicker: dict[str, list[float]] = {name: [] for name in ROWS}
    skipped, cuts, pairs = {}, {}, 0
    console = Console()
    with image_progress(console) as bar, tempfile.TemporaryDirectory() as scratch:
        task = bar.add_task("evaluating videos", total=len(paths), unit="videos")
        for path in paths:
            try:
                clip = score_clip(network, path, size, cfg.batch_size, Path(scratch))
            except VideoError as err:
                skipped[str(path)] = err.reason
                continue
            for name in ROWS:
                if name in psnr:
                    psnr[name].extend(clip.psnr[name])
                colour[name].extend(clip.colourfulness[name])
                flicker[name].append(clip.warping_errors[name])
            cuts[str(path)], pairs = clip.cuts, pairs + clip.pairs
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
        error, cf = float(np.mean(flicker[name])), float(np.mean(colour[name]))
        summary[f"video/{prefix}warping_error"] = error
        summary[f"video/{prefix}cf"] = cf
        # Per unit of colour; undefined for (nearly) gray output.
        summary[f"video/{prefix}warping_error_per_cf"] = 1000 * error / cf if cf >= 1 else None
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


@dataclass
class ClipScores:
    """One clip's scores per version (``ROWS``): PSNR and colourfulness of each frame, the
    warping error; the cuts found and the frame pairs scored."""

    psnr: dict[str, list[float]]
    colourfulness: dict[str, list[float]]
    warping_errors: dict[str, float]
    cuts: list[int]
    pairs: int


def score_clip(network: Any, path: Path, size: int, batch_size: int, scratch: Path) -> ClipScores:
    """Colorize the colour video ``path`` per frame, with flow and as the gray baseline, each
    written into ``scratch`` as ``colorizer.colorize`` writes it and decoded again; score them
    and the true video itself. ``VideoError`` if ``path`` cannot be read."""
    versions: dict[str, Callable[[list[torch.Tensor]], list[torch.Tensor]]] = {
        "model": FrameColorizer(network, size, "none"),
        "flow": FrameColorizer(network, size, "flow"),
        "gray": lambda frames: gray_frames(frames, network.device),
    }
    outputs = {"truth": decode_frames(path)}
    for name, colorizer in versions.items():
        written = scratch / f"{name}{path.suffix}"
        colorize_video(path, written, colorizer, batch_size)
        outputs[name] = decode_frames(written)
    truth = outputs["truth"]
    meter = WarpingError()
    scores = ClipScores({name: [] for name in versions}, {name: [] for name in ROWS}, {}, [], 0)
    for start in range(0, len(truth), batch_size):
        stacked = {name: torch.stack(frames[start : start + batch_size])
                   for name, frames in outputs.items()}  # fmt: skip
        (lightness,) = full_lightness([stacked["truth"]], torch.device("cpu"))
        batch = {name: frames.float() / 255 for name, frames in stacked.items()}
        for name in versions:
            scores.psnr[name] += psnr_per_image(batch[name], batch["truth"]).tolist()
        for name, frames in batch.items():
            scores.colourfulness[name] += colourfulness(frames).tolist()
        for i, l_full in enumerate(lightness.split(1)):
            rgb = {name: frames[i].permute(1, 2, 0).numpy() for name, frames in batch.items()}
            meter.update(lightness_u8(l_full), rgb)
    scores.warping_errors, scores.cuts, scores.pairs = meter.errors(), meter.cuts, meter.pairs
    return scores


def gray_frames(frames: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    """The gray baseline of uint8 sRGB ``[3, H, W]`` frames (their L, ab = 0), uint8 too."""
    (lightness,) = full_lightness([torch.stack(frames)], device)
    no_colour = torch.zeros_like(lightness).expand(-1, 2, -1, -1)
    return list(merge_full_resolution(lightness, no_colour))


def chroma_of(image: torch.Tensor) -> np.ndarray:
    """uint8 sRGB ``[3, H, W]`` -> CIE ab float32 ``[H, W, 2]`` (ab units)."""
    return np.ascontiguousarray(rgb_to_lab(image[None])[0, 1:].permute(1, 2, 0).cpu().numpy())


def video_table(summary: dict[str, Any]) -> ResultTable:
    """Per frame, temporal=flow, gray baseline and truth: PSNR, warping error, CF, per CF."""
    table = ResultTable(
        f"{summary['num_videos']} videos, {summary['num_frames']} frames",
        ["", "PSNR (dB)", "warping error (x10^-3)", "CF", "warping error per CF"],
        caption=DEFINITIONS,
    )
    for prefix, label in ROWS.values():
        psnr = summary.get(f"video/{prefix}psnr")
        error = 1000 * summary[f"video/{prefix}warping_error"]
        table.add_row(label, cell(psnr, 2), cell(error, 3), cell(summary[f"video/{prefix}cf"], 2),
                      cell(summary[f"video/{prefix}warping_error_per_cf"], 4))  # fmt: skip
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
