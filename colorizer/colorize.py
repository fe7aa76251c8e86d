"""Colorize photos and videos at full size:
``python -m colorizer.colorize ckpt_path=X input=P output=D``.

``input`` is an image or video file, a folder (searched recursively) or a glob; each photo is
written under ``output`` with its own name and sub-folder, size and aspect ratio. The network
sees the photo's luminance at its working size (``size``, by default the size the model was
trained at); its chroma is upsampled and merged
with the photo's full-resolution L (``colorizer.inference``). Colour photos are recoloured from
their luminance unless ``color_inputs=skip``. Videos are colorized frame by frame in batches,
their chroma stabilised along the motion (``temporal=flow``), audio copied
(``colorizer.video``).

A photo or video that cannot be read or written is counted and reported, never stops the
others, and leaves no partial file behind. Exit status: 0 when every input was colorized or
skipped on purpose, 1 when any failed, 2 for a usage error (one ``error:`` line).
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections import Counter, deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import av.error
import torch
from omegaconf import DictConfig
from rich.console import Console

from colorizer.cli import run_app
from colorizer.console import image_progress
from colorizer.data.loaders import image_loader
from colorizer.data.shards import extract_split, is_shard_source
from colorizer.error_lines import is_out_of_memory, one_line
from colorizer.errors import ConfigError, require_int
from colorizer.hints import HintError, PixelHint, read_hints_file
from colorizer.inference import (
    PRECISIONS,
    ChromaNetwork,
    colorize_full_resolution,
    open_network,
    resolve_device,
)
from colorizer.models.spec import check_size_option
from colorizer.photo_files import (
    FORMATS,
    Job,
    PhotoFiles,
    clashing_targets,
    eight_bit,
    find_jobs,
    side_by_side,
    write_image,
)
from colorizer.report import write_report
from colorizer.video import TEMPORAL, FrameColorizer, VideoError, colorize_video

log = logging.getLogger(__name__)

COLOR_INPUTS = ("grayscale", "skip")
COMPARE_SUFFIX = "_before_after"
_MAX_LISTED_FAILURES = 20
WRITER_THREADS = 2
EXISTS = "output exists (overwrite=true replaces it)"


def colorize(cfg: DictConfig, network: ChromaNetwork | None = None) -> dict[str, Any]:
    """Colorize every photo and video ``cfg.input`` names into ``cfg.output``; returns the
    summary. ``cfg.input`` may also be prepared shards (a folder with a manifest, or an S3
    prefix): the images of their ``input_split``, named after their sources.

    ``network`` replaces the one ``cfg.ckpt_path`` names, e.g. to reuse a loaded model.
    """
    _check(cfg)  # before any shard is fetched
    source = str(cfg.input)
    if not is_shard_source(source):
        return _colorize(cfg, network, source)
    with tempfile.TemporaryDirectory(prefix="colorizer-shards-") as folder:
        split = str(cfg.get("input_split", "test"))
        count = extract_split(source, split, Path(folder), endpoint_url=cfg.get("endpoint_url"))
        log.info("%s: %d images of the %s split", source, count, split)
        return _colorize(cfg, network, folder)


def _colorize(cfg: DictConfig, network: ChromaNetwork | None, pattern: str) -> dict[str, Any]:
    device = resolve_device(str(cfg.device))
    bf16 = str(cfg.precision) == "bf16" or (str(cfg.precision) == "auto" and device.type == "cuda")
    if network is None:
        network = open_network(str(cfg.ckpt_path), str(cfg.backend), device, bf16=bf16)
    device = network.device
    size = network.spec.working_size(cfg.size)
    if network.input_size is not None and cfg.size not in (None, network.input_size):
        log.warning("%s works at %d px only; size=%s is not used", network.name,
                    network.input_size, cfg.size)  # fmt: skip
    jobs = find_jobs(pattern, Path(str(cfg.output)), cfg.format)
    hints, unmatched = _hints_of(cfg.get("hints"), network, jobs)
    failed = clashing_targets(jobs)  # costs those files only; the others are written
    skipped: dict[Path, str] = {}
    if not cfg.overwrite:
        skipped = {job.source: EXISTS for job in jobs if job.target.exists()}
    waiting = [job for job in jobs if job.source not in skipped and job.source not in failed]
    todo = [job for job in waiting if not job.is_video]
    videos = [job for job in waiting if job.is_video]
    done = recoloured = 0
    loader = image_loader(
        PhotoFiles(todo, cfg.max_megapixels),
        batch_size=cfg.batch_size,
        num_workers=cfg.num_workers if todo else 0,  # no worker processes for videos alone
        device=device,
        collate_fn=list,
    )
    console = Console(stderr=True)
    start = time.perf_counter()
    # Encoding (PNG above all) is slow and releases the GIL: writer threads overlap it with
    # the next batch. At most two batches of outputs wait in memory.
    pending: deque[tuple[Job, Future[str | None]]] = deque()

    def finish_writes(keep: int) -> None:
        nonlocal done
        while len(pending) > keep:
            job, future = pending.popleft()
            error = future.result()
            if error is None:
                done += 1
            else:
                failed[job.source] = error

    with image_progress(console) as bar, ThreadPoolExecutor(WRITER_THREADS) as writers:
        task = bar.add_task("colorizing", total=len(todo), visible=bool(todo))
        for batch in loader:
            photos = []
            for item in batch:
                job = todo[item["index"]]
                if item["error"] is not None:
                    failed[job.source] = item["error"]
                elif cfg.color_inputs == "skip" and item["colour"]:
                    skipped[job.source] = "colour photo (color_inputs=skip)"
                else:
                    height, width = item["image"].shape[-2:]
                    try:
                        item["hints"] = [h.in_photo(width, height) for h in hints.get(job.name, [])]
                    except HintError as err:
                        failed[job.source] = f"hints: {err}"
                        continue
                    photos.append((job, item))
                    recoloured += item["colour"]
            colorized, errors = _colorize_batch(network, photos, size)
            failed |= {job.source: error for job, error in errors.items()}
            for job, item, output in colorized:
                pending.append((job, writers.submit(_write, job, item, output, cfg)))
            finish_writes(keep=2 * cfg.batch_size)
            bar.advance(task, len(batch))
        finish_writes(keep=0)
        photo_seconds = time.perf_counter() - start
        frames, failed_videos, not_carried = _colorize_videos(network, videos, size, cfg, bar)
    failed |= failed_videos
    seconds = time.perf_counter() - start
    summary = {
        "model": network.name,
        "size": size,
        "backend": type(network).__name__,
        "device": str(device),
        "found": len(jobs),
        "colorized": done + len(videos) - len(failed_videos),
        "skipped": len(skipped),
        "failed": len(failed),
        "colour_inputs_recoloured": recoloured,
        "skipped_reasons": dict(Counter(skipped.values())),
        "failed_reasons": dict(Counter(failed.values())),
        "failures": {str(path): reason for path, reason in failed.items()},
        "seconds": round(seconds, 3),
        "images_per_s": _rate(done, photo_seconds),
        "videos": len(videos),
        "hints_file": None if cfg.get("hints") is None else str(cfg.hints),
        "hinted_photos": sum(bool(hints.get(job.name)) for job in todo if job.source not in failed),
        "hints_unmatched": unmatched,
        "frames": frames,
        "frames_per_s": _rate(frames, seconds - photo_seconds),
        "not_carried": not_carried,
        "output": str(Path(str(cfg.output)).resolve()),
    }
    _report(summary, console, Path(str(cfg.paths.output_dir)))
    return summary


def _check(cfg: DictConfig) -> None:
    """Refuse bad option values with a message naming the key."""
    check_size_option("size", cfg.size)
    for key in ("batch_size", "quality"):
        require_int(key, cfg[key])
    if cfg.quality > 100:
        raise ConfigError(f"quality={cfg.quality} must be at most 100")
    require_int("num_workers", cfg.num_workers, least=0)
    if isinstance(cfg.max_megapixels, bool) or not isinstance(cfg.max_megapixels, int | float):
        raise ConfigError(f"max_megapixels={cfg.max_megapixels} must be a number of megapixels")
    if cfg.max_megapixels <= 0:
        raise ConfigError(f"max_megapixels={cfg.max_megapixels} must be positive")
    if cfg.format is not None and cfg.format not in FORMATS:
        raise ConfigError(f"format={cfg.format} is not one of: null, {', '.join(FORMATS)}")
    if cfg.color_inputs not in COLOR_INPUTS:
        raise ConfigError(f"color_inputs={cfg.color_inputs} is not one of: grayscale, skip")
    if str(cfg.temporal) not in TEMPORAL:
        raise ConfigError(f"temporal={cfg.temporal} is not one of: {', '.join(TEMPORAL)}")
    require_int("crf", cfg.crf, least=0)
    if str(cfg.precision) not in PRECISIONS:
        raise ConfigError(f"precision={cfg.precision} is not one of: {', '.join(PRECISIONS)}")


def _colorize_batch(
    network: ChromaNetwork, photos: list[tuple[Job, dict]], size: int
) -> tuple[list[tuple[Job, dict, torch.Tensor]], dict[Job, str]]:
    """Colorize a batch: (job, item, output) of those that worked, errors of the others. The
    further pages of a multi-page TIFF are colorized too, into ``item["page_outputs"]``."""
    if not photos:
        return [], {}
    images = [page for _, item in photos for page in (item["image"], *item.get("pages", ()))]
    hints = [
        hint for _, item in photos
        for hint in (item.get("hints", []), *([] for _ in item.get("pages", ())))
    ]  # fmt: skip
    try:
        every = colorize_full_resolution(network, images, size, hints if any(hints) else None)
    except (RuntimeError, MemoryError) as err:
        if len(photos) == 1:
            return [], {photos[0][0]: _describe_failure(err)}
        # One photo too large for the batch must not fail the others: retry one at a time.
        done, failed = [], {}
        for photo in photos:
            one_done, one_failed = _colorize_batch(network, [photo], size)
            done += one_done
            failed |= one_failed
        return done, failed
    outputs = []
    for _, item in photos:
        item["page_outputs"] = every[1 : 1 + len(item.get("pages", ()))]
        outputs.append(every[0])
        every = every[1 + len(item["page_outputs"]) :]
    return [(job, item, out) for (job, item), out in zip(photos, outputs, strict=True)], {}


def _hints_of(
    path: str | None, network: ChromaNetwork, jobs: list[Job]
) -> tuple[dict[str, list[PixelHint]], list[str]]:
    """The hints file's points by photo name, and the names it gives that are no photo of
    the input (videos take no hints)."""
    if path is None:
        return {}, []
    hints = read_hints_file(path)
    if not network.spec.hints:
        raise ConfigError(
            f"hints={path}, but model={network.name} takes no hints: use a model trained "
            "with model.hints=true"
        )
    photos = {job.name for job in jobs if not job.is_video}
    unmatched = sorted(name for name in hints if name not in photos)
    if unmatched:
        listed = ", ".join(unmatched[:5]) + (" ..." if len(unmatched) > 5 else "")
        log.warning("hints=%s names %d photos that are not in the input: %s",
                    path, len(unmatched), listed)  # fmt: skip
    return hints, unmatched


def _colorize_videos(
    network: ChromaNetwork, videos: list[Job], size: int, cfg: DictConfig, bar: Any
) -> tuple[int, dict[Path, str], dict[str, list[str]]]:
    """Colorize each video at working size ``size`` (a progress bar of frames each); returns
    the frames written, the failures' reasons and, per video, the streams not carried."""
    frames, failed, not_carried = 0, {}, {}
    for job in videos:
        task = bar.add_task(job.source.name, total=None, unit="frames")

        def show(done: int, total: int | None, task: Any = task) -> None:
            bar.update(task, completed=done, total=total)

        colorizer = FrameColorizer(network, size, str(cfg.temporal))
        left: list[str] = []
        try:
            frames += colorize_video(job.source, job.target, colorizer, cfg.batch_size, cfg.crf,
                                     progress=show, not_carried=left)  # fmt: skip
        except VideoError as err:
            failed[job.source] = err.reason
        except (OSError, av.error.FFmpegError) as err:
            failed[job.source] = f"cannot write {job.target.name} ({one_line(err)[:200]})"
        except (RuntimeError, MemoryError) as err:
            failed[job.source] = _describe_failure(err)
        bar.update(task, visible=False)
        if left and job.source not in failed:
            not_carried[str(job.source)] = left
    return frames, failed, not_carried


def _rate(count: int, seconds: float) -> float:
    return round(count / seconds, 3) if count and seconds > 0 else 0.0


def _write(job: Job, item: dict, output: torch.Tensor, cfg: DictConfig) -> str | None:
    """Write a colorized photo (and its before/after image); returns the error, if any."""
    before, pages = item["image"], item.get("page_outputs", [])
    if item.get("bits") == 8 and output.dtype == torch.uint16:  # a profiled 8-bit gray scan
        before, output, *pages = (as_8_bit(x) for x in (before, output, *pages))
    if item.get("pages_left_out"):
        log.warning("%s: its %d further pages are kept only in a TIFF output (format=tif)",
                    job.source, item["pages_left_out"])  # fmt: skip
    # A TIFF's pages are of one depth: a 16-bit page among 8-bit ones is written at 8 bits.
    if any(page.dtype != output.dtype for page in pages):
        output, *pages = (as_8_bit(x) if x.dtype == torch.uint16 else x for x in (output, *pages))
    try:
        write_image(output, job.target, cfg.quality, item.get("exif"), pages, item.get("tiff_tags"))
        if cfg.compare:
            compare = job.target.with_stem(job.target.stem + COMPARE_SUFFIX)
            write_image(side_by_side(before, output), compare, cfg.quality, item.get("exif"))
    except (OSError, ValueError) as err:
        return f"cannot write {job.target.name} ({err})"
    return None


def as_8_bit(image: torch.Tensor) -> torch.Tensor:
    """uint16 -> uint8, rounded (:func:`~colorizer.photo_files.eight_bit`); uint8 as it is."""
    return torch.from_numpy(eight_bit(image.numpy())) if image.dtype == torch.uint16 else image


def _describe_failure(err: BaseException) -> str:
    if is_out_of_memory(err) or "out of memory" in str(err).lower():
        return "out of memory (lower batch_size or size, or use device=cpu)"
    return f"{type(err).__name__}: {one_line(err)[:200]}"


def _report(summary: dict[str, Any], console: Console, run_dir: Path) -> None:
    """Write summary.json to the run directory; print the failures and a summary line."""
    listed = list(summary["failures"].items())[:_MAX_LISTED_FAILURES]
    lines = [f"failed: {path}: {reason}" for path, reason in listed]
    lines += [f"not carried from {path}: {what}"
              for path, notes in summary["not_carried"].items() for what in notes]  # fmt: skip
    hidden = summary["failed"] - _MAX_LISTED_FAILURES
    if hidden > 0:
        lines.append(f"... and {hidden} more failures: see {run_dir / 'summary.json'}")
    line = f"colorized {summary['colorized']} of {summary['found']}"
    for outcome in ("skipped", "failed"):
        reasons = ", ".join(f"{n} {why}" for why, n in summary[f"{outcome}_reasons"].items())
        line += f", {outcome} {summary[outcome]}" + (f" ({reasons})" if reasons else "")
    rates = []
    if summary["images_per_s"] or not summary["videos"]:
        rates.append(f"{summary['images_per_s']:.2f} images/s")
    if summary["videos"]:
        rates.append(f"{summary['frames']} video frames at {summary['frames_per_s']:.2f} frames/s")
    line += f"; {', '.join(rates)} on {summary['device']}"
    if summary["colour_inputs_recoloured"]:
        lines.append(
            f"{summary['colour_inputs_recoloured']} colour photos were recoloured from their "
            "luminance (color_inputs=skip leaves colour photos alone)"
        )
    lines.append(line)
    write_report(run_dir, summary, json_name="summary.json", lines=lines,
                 also_wrote=[Path(summary["output"])], console=console)  # fmt: skip


def _cli(cfg: DictConfig) -> None:
    summary = colorize(cfg)
    if summary["failed"]:
        raise SystemExit(1)


def main() -> None:
    run_app(_cli, config_name="colorize")


if __name__ == "__main__":
    main()
