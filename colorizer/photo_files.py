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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from colorizer.data.images import (
    IMAGE_EXTENSIONS,
    SkippedImage,
    is_grayscale,
    list_image_files,
    load_photo,
    pixel_limit,
)
from colorizer.errors import ConfigError
from colorizer.icc import srgb_profile
from colorizer.tiff_files import TIFF_TAGS, write_tiff

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

    Items: ``{"index", "image", "error": str or None, "colour": bool, "exif": bytes or
    None, "bits": 8 or 16}``: ``image`` is None or what
    :func:`~colorizer.data.images.load_photo` gives (uint8 ``[3, H, W]`` sRGB, or gray
    ``[1, H, W]`` uint8 or uint16); ``exif`` is the photo's EXIF with the orientation reset,
    since ``image`` is already upright; ``bits`` the depth of the file's samples (an 8-bit
    gray scan with a gray profile is read at 16 bits, but written back at 8); ``pages`` a
    TIFF's further pages when the output is a TIFF, else ``pages_left_out`` counts them. Photos over
    ``max_megapixels`` are refused (None: Pillow's limit, about 89 MP).
    """

    def __init__(self, jobs: list[Job], max_megapixels: float | None = None):
        self.jobs = jobs
        self.max_megapixels = max_megapixels

    def __len__(self) -> int:
        return len(self.jobs)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item: dict[str, Any] = {"index": index, "image": None, "error": None, "colour": False}
        source = self.jobs[index].source
        try:
            # Pillow's limit is the process's: here, a worker's, or colorize's own.
            with pixel_limit(self.max_megapixels):
                image = load_photo(source, min_size=1)
        except SkippedImage as skip:
            return item | {"error": skip.described}
        except OSError as err:
            return item | {"error": f"unreadable ({err.strerror or type(err).__name__})"}
        stride = max(1, max(image.shape[1:]) // 256)
        colour = image.shape[0] == 3 and not is_grayscale(image[:, ::stride, ::stride])
        metadata = _file_metadata(source)
        # Only a TIFF output keeps further pages: for another format they are not decoded.
        keeps_pages = self.jobs[index].target.suffix.lower() in (".tif", ".tiff")
        try:
            with pixel_limit(self.max_megapixels):
                pages = [
                    load_photo(source, min_size=1, page=i)
                    for i in range(1, metadata.pages if keeps_pages else 1)
                ]
        except SkippedImage as skip:
            return item | {"error": skip.described}
        item["pages_left_out"] = 0 if keeps_pages else metadata.pages - 1
        # 16-bit colour comes from OpenCV at its depth; the header Pillow reads says 8.
        bits = 16 if image.dtype == torch.uint16 and image.shape[0] == 3 else metadata.bits
        kept = {"exif": metadata.exif, "bits": bits, "tiff_tags": metadata.tiff_tags}
        return item | kept | {"image": image, "colour": colour, "pages": pages}


@dataclass(frozen=True)
class FileMetadata:
    """What of a photo file besides its first page's pixels colorize carries to the output:
    EXIF (orientation reset, TIFF layout tags left out), the depth of its samples (8 or 16
    bits), its page count, and a TIFF's descriptive tags (scanner, software, dates, resolution:
    ``TIFF_TAGS``) by tag number."""

    exif: bytes | None = None
    bits: int = 8
    pages: int = 1
    tiff_tags: dict[int, Any] = field(default_factory=dict)


# Tags that say how a TIFF's pixels are laid out in that file, meaningless in another.
_LAYOUT_TAGS = frozenset(range(254, 269)) | {
    273, 277, 278, 279, 280, 281, 284, 292, 293, 317, 320, 322, 323, 324, 325, 338, 339, 340,
    341, 530, 531, 532, 34675,
}  # fmt: skip


def _file_metadata(path: Path) -> FileMetadata:
    """The metadata of ``path`` that outputs keep (:class:`FileMetadata`)."""
    try:
        with Image.open(path) as image:
            bits = 16 if image.mode == "I" or image.mode.startswith("I;16") else 8
            pages = getattr(image, "n_frames", 1) if image.format == "TIFF" else 1
            tags = getattr(image, "tag_v2", {})
            tiff_tags = {tag: tags[tag] for tag in TIFF_TAGS if tag in tags}
            exif = image.getexif()
            for tag in _LAYOUT_TAGS & set(exif):
                del exif[tag]
            if _EXIF_ORIENTATION in exif:
                exif[_EXIF_ORIENTATION] = 1
            return FileMetadata(exif.tobytes() if exif else None, bits, pages, tiff_tags)
    except Exception:  # noqa: BLE001 - metadata is a courtesy; the pixels already loaded
        return FileMetadata()


def side_by_side(before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
    """The input (``[1 or 3, H, W]``) and its output (``[3, H, W]``, the same dtype) ->
    ``[3, H, 2W + gap]``: input left, output right, white gap."""
    white = 65535 if after.dtype == torch.uint16 else 255
    gap = torch.full((3, before.shape[1], max(2, before.shape[2] // 100)), white, dtype=after.dtype)
    return torch.cat([before.expand(3, -1, -1), gap, after], dim=2)


def write_image(
    image: torch.Tensor,
    path: Path,
    quality: int,
    exif: bytes | None,
    pages: Sequence[torch.Tensor] = (),
    tiff_tags: Mapping[int, Any] | None = None,
) -> None:
    """Write uint8 or uint16 ``[3, H, W]`` atomically: a failed write leaves no file at
    ``path``, tagged with an sRGB ICC profile (BMP has none). uint16 stays 16-bit in PNG and
    TIFF (which Pillow cannot write in RGB: OpenCV and tifffile do); other formats get it
    rounded to 8 bits. A TIFF also gets the further ``pages`` (of the same dtype) and the
    scanner's ``tiff_tags`` (``TIFF_TAGS``); other formats get ``exif``."""
    fmt = SUFFIX_FORMATS[path.suffix.lower()]
    path.parent.mkdir(parents=True, exist_ok=True)
    # A hidden name in the same folder: invisible to a later scan, and os.replace stays atomic.
    # It ends in the format's suffix, from which OpenCV chooses its encoder.
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial{path.suffix}")
    pixels = image.permute(1, 2, 0).numpy()  # [H, W, 3]: a view when image is such a view
    try:
        if fmt == "TIFF":
            every = [pixels, *(page.permute(1, 2, 0).numpy() for page in pages)]
            write_tiff(every, partial, tiff_tags or {}, exif)
        elif pixels.dtype == np.uint16 and fmt == "PNG":
            _write_opencv(pixels, partial, exif)
        else:
            if pixels.dtype == np.uint16:
                pixels = eight_bit(pixels)
            if fmt == "JPEG":
                _write_opencv(pixels, partial, exif, [cv2.IMWRITE_JPEG_QUALITY, quality])
            else:
                options: dict[str, Any] = {"quality": quality} if fmt == "WEBP" else {}
                if fmt != "BMP":
                    options["icc_profile"] = srgb_profile()
                if exif and fmt in ("PNG", "WEBP"):
                    options["exif"] = exif
                Image.fromarray(pixels).save(partial, format=fmt, **options)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def eight_bit(levels: np.ndarray) -> np.ndarray:
    """uint16 levels -> uint8, rounded: round(v / 257), so 65535 -> 255, 128 -> 0, 129 -> 1."""
    return ((levels.astype(np.uint32) + 128) // 257).astype(np.uint8)


def _write_opencv(
    pixels: np.ndarray, path: Path, exif: bytes | None, params: list[int] | None = None
) -> None:
    """RGB ``[H, W, 3]`` -> ``path`` by OpenCV (format from the suffix), EXIF kept. OpenCV
    encodes from the array itself, where Pillow would first copy it at 4 bytes a pixel (1.6 GB
    for a 400-megapixel scan); its red and blue planes are swapped in place for OpenCV's BGR
    and back, a band of rows at a time, so no whole copy is made either."""
    if not pixels.flags.c_contiguous:  # a view (the before/after image): OpenCV needs rows
        pixels = np.ascontiguousarray(pixels)
    _swap_red_blue(pixels)
    kinds, blocks = [cv2.IMAGE_METADATA_ICCP], [np.frombuffer(srgb_profile(), np.uint8)]
    if exif:
        # OpenCV writes EXIF from the TIFF data and adds JPEG's "Exif\0\0" itself.
        kinds.append(cv2.IMAGE_METADATA_EXIF)
        blocks.append(np.frombuffer(exif.removeprefix(b"Exif\x00\x00"), np.uint8))
    try:
        written = cv2.imwriteWithMetadata(str(path), pixels, kinds, blocks, params or [])
    finally:
        _swap_red_blue(pixels)
    if not written:
        raise OSError(f"OpenCV could not write {path.name}")


def _swap_red_blue(pixels: np.ndarray, band: int = 1024) -> None:
    """RGB <-> BGR of ``[H, W, 3]`` in place, ``band`` rows at a time (bounded scratch)."""
    for top in range(0, pixels.shape[0], band):
        rows = pixels[top : top + band]
        rows[..., [0, 2]] = rows[..., [2, 0]]
