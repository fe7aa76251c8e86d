"""The files ``colorizer.colorize`` reads and writes: photo discovery, decoding, atomic writes.

Discovery maps each input photo or video to its output path (sub-folders and names kept; a
video keeps its container whatever ``format`` says); photo decoding runs
in DataLoader workers and turns a bad file into a reason instead of an exception; writing goes
through a hidden temporary file and ``os.replace``, so a failed write leaves nothing behind.
"""

from __future__ import annotations

import glob
import os
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch.utils.data import Dataset

from colorizer.data.images import (
    IMAGE_EXTENSIONS,
    SkippedImage,
    is_grayscale,
    list_image_files,
    load_rgb,
)
from colorizer.errors import ConfigError

# format= choice -> (PIL format, file suffix). Inputs keep their own format by default.
FORMATS = {"png": ("PNG", ".png"), "jpg": ("JPEG", ".jpg"), "tif": ("TIFF", ".tif")}
FORMATS |= {"webp": ("WEBP", ".webp")}
SUFFIX_FORMATS = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".tif": "TIFF", ".tiff": "TIFF"}
SUFFIX_FORMATS |= {".webp": "WEBP", ".bmp": "BMP"}
# Containers colorize reads and writes back (colorizer.video).
VIDEO_EXTENSIONS = frozenset({".mp4", ".m4v", ".mov", ".mkv", ".avi", ".webm"})
INPUT_EXTENSIONS = IMAGE_EXTENSIONS | VIDEO_EXTENSIONS
_GLOB_MAGIC = re.compile(r"[*?[]")
_EXIF_ORIENTATION = 0x0112


@dataclass(frozen=True)
class Job:
    """One photo or video to colorize: where it is read from and written to, and its name:
    its path relative to the input folder (or the glob's base), as a hints file names it."""

    source: Path
    target: Path
    name: str = ""

    @property
    def is_video(self) -> bool:
        return self.source.suffix.lower() in VIDEO_EXTENSIONS


def find_jobs(pattern: str, output: Path, fmt: str | None = None) -> list[Job]:
    """The photos and videos ``pattern`` names (a file, a folder searched recursively, or a
    glob), each with its output path: ``output`` / its path relative to the folder or the
    glob's base."""
    if _GLOB_MAGIC.search(pattern):
        parts = Path(pattern).parts
        first_wildcard = next(i for i, part in enumerate(parts) if _GLOB_MAGIC.search(part))
        base = Path(*parts[:first_wildcard]) if first_wildcard else Path(".")
        matches = (Path(p) for p in glob.glob(pattern, recursive=True))
        files = sorted(p for p in matches if p.is_file() and p.suffix.lower() in INPUT_EXTENSIONS)
    elif Path(pattern).is_dir():
        base, files = Path(pattern), list_image_files(pattern, INPUT_EXTENSIONS)
    elif Path(pattern).is_file():
        base, files = Path(pattern).parent, [Path(pattern)]
    else:
        raise ConfigError(
            f"input={pattern} does not exist: pass an image or video file, a folder or a "
            "quoted glob such as 'scans/**/*.tif'"
        )
    if output.exists() and not output.is_dir():
        raise ConfigError(f"output={output} is a file: name a folder to write to")
    output_dir, input_dir = output.resolve(), base.resolve()
    if output_dir == input_dir:
        raise ConfigError(
            f"output={output} is the input folder, whose photos would be overwritten: "
            "choose another folder"
        )
    if output_dir.is_relative_to(input_dir):
        # An output folder inside the input tree: earlier outputs are not inputs.
        files = [f for f in files if not f.resolve().is_relative_to(output_dir)]
    if not files:
        kinds = " ".join(sorted(INPUT_EXTENSIONS))
        raise ConfigError(f"input={pattern} holds no image or video files ({kinds})")
    jobs = _distinct_targets(
        [
            Job(f, output / output_name(f.relative_to(base), fmt), f.relative_to(base).as_posix())
            for f in files
        ]
    )
    for job in jobs:
        if job.target.resolve() == job.source.resolve():
            raise ConfigError(
                f"output={output} would overwrite the input {job.source}: choose another folder"
            )
    return jobs


def _distinct_targets(jobs: list[Job]) -> list[Job]:
    """Inputs that would share an output name (``palette.gif`` and ``palette.png``, both
    written as PNG) keep their own extension in it when the output's differs:
    ``palette.gif.png`` beside ``palette.png``."""
    sharing = Counter(job.target for job in jobs)
    return [
        Job(job.source, job.target.with_name(job.source.name + job.target.suffix), job.name)
        if sharing[job.target] > 1 and job.source.suffix.lower() != job.target.suffix.lower()
        else job
        for job in jobs
    ]


def clashing_targets(jobs: list[Job]) -> dict[Path, str]:
    """Inputs whose output file another input takes even so (``palette.gif`` would become
    ``palette.gif.png``, the output of an input of that name): source -> why it is not
    written."""
    taken: dict[Path, Path] = {}
    clashes = {}
    # An input whose output keeps its own name has the first claim on it.
    for job in sorted(jobs, key=lambda job: job.target.name != job.source.name):
        other = taken.setdefault(job.target, job.source)
        if other != job.source:
            clashes[job.source] = f"output name taken by {other.name}"
    return clashes


def output_name(relative: Path, fmt: str | None) -> Path:
    """The output's path: the input's, with the suffix of ``format`` (GIF becomes PNG); a
    video keeps its own."""
    if relative.suffix.lower() in VIDEO_EXTENSIONS:
        return relative
    if fmt is not None:
        return relative.with_suffix(FORMATS[fmt][1])
    if relative.suffix.lower() in SUFFIX_FORMATS:
        return relative
    return relative.with_suffix(".png")  # GIF (a 256-colour palette) and other read-only formats


class PhotoFiles(Dataset):
    """Decodes the jobs' photos in workers; a bad file yields its reason instead of raising.

    Items: ``{"index", "image": uint8 [3, H, W] or None, "error": str or None, "colour": bool,
    "exif": bytes or None}``; ``exif`` is the photo's EXIF with the orientation reset, since
    ``image`` is already upright.
    """

    def __init__(self, jobs: list[Job]):
        self.jobs = jobs

    def __len__(self) -> int:
        return len(self.jobs)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item: dict[str, Any] = {"index": index, "image": None, "error": None, "colour": False}
        source = self.jobs[index].source
        try:
            image = load_rgb(source, min_size=1)
        except SkippedImage as skip:
            return item | {"error": skip.reason}
        except OSError as err:
            return item | {"error": f"unreadable ({err.strerror or type(err).__name__})"}
        stride = max(1, max(image.shape[1:]) // 256)
        colour = not is_grayscale(image[:, ::stride, ::stride])
        return item | {"image": image, "colour": colour, "exif": _upright_exif(source)}


def _upright_exif(path: Path) -> bytes | None:
    """The file's EXIF (dates, captions, camera) with orientation 1, or None."""
    try:
        with Image.open(path) as image:
            exif = image.getexif()
            if not exif:
                return None
            if _EXIF_ORIENTATION in exif:
                exif[_EXIF_ORIENTATION] = 1
            return exif.tobytes()
    except Exception:  # noqa: BLE001 - metadata is a courtesy; the pixels already loaded
        return None


def side_by_side(before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
    """uint8 ``[3, H, W]`` twice -> ``[3, H, 2W + gap]``: input left, output right, white gap."""
    gap = torch.full((3, before.shape[1], max(2, before.shape[2] // 100)), 255, dtype=torch.uint8)
    return torch.cat([before, gap, after], dim=2)


def write_image(image: torch.Tensor, path: Path, quality: int, exif: bytes | None) -> None:
    """Write uint8 ``[3, H, W]`` atomically: a failed write leaves no file at ``path``."""
    fmt = SUFFIX_FORMATS[path.suffix.lower()]
    options: dict[str, Any] = {"quality": quality} if fmt in ("JPEG", "WEBP") else {}
    if exif and fmt in ("JPEG", "PNG", "WEBP"):
        options["exif"] = exif
    path.parent.mkdir(parents=True, exist_ok=True)
    # A hidden name in the same folder: invisible to a later scan, and os.replace stays atomic.
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(partial, format=fmt, **options)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
