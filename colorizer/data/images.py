"""Robust image decoding shared by every data source.

Every file a datamodule reads goes through :func:`load_rgb`, and every folder is validated
once at set-up by :func:`scan_images`, so a truncated download or an HTML error page saved
as ``.jpg`` is counted and skipped instead of crashing a worker hours into training.
"""

from __future__ import annotations

import logging
import os
import struct
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from colorizer.data.deep_colour import is_16_bit_colour, orientation_of, read_16_bit_colour
from colorizer.icc import to_srgb

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"})

# The fixed vocabulary of reasons, in the order summaries list ties.
SKIP_REASONS = (
    "empty file",
    "not an image",
    "truncated or corrupt",
    "decompression bomb",
    "too small",
    "grayscale",
)

# What PIL's decoders raise on malformed data (beyond OSError, e.g. "image file is truncated").
_CORRUPT_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error)
# Errors that say the file could not be read at all: not the file's fault, so not a skip.
_ACCESS_ERRORS = (FileNotFoundError, PermissionError, IsADirectoryError)

# Between MAX_IMAGE_PIXELS and twice that PIL only warns (above, it raises). load_rgb compares
# the pixel count with the limit itself, so the warning says nothing new; silenced once here,
# because swapping filters per call (catch_warnings) is process-wide and not thread-safe.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)

# A compressed file cannot plausibly hold more pixels than this per byte: an all-white 8-bit
# PNG, deflate's best case, holds about 1,000; a scanned photograph, with grain, 2 to 20. A
# header that declares more (a billion pixels in a few kB) is a bomb, refused before the
# decoder allocates for it. Checked above PLAUSIBILITY_FLOOR pixels only: below it even a
# bomb costs little memory, and small flat images (a blank 1 MP PNG) are legitimate.
PLAUSIBLE_PIXELS_PER_BYTE = 1000
PLAUSIBILITY_FLOOR = 50_000_000

# A pixel is chromatic when its channels spread by more than this many levels: well above
# the 0-6 levels of chroma noise a JPEG encoder leaves in a gray photograph.
_CHROMA_LEVELS = 12
# An image is grayscale when fewer than this fraction of its pixels are chromatic, so a gray
# scan with a tiny coloured stamp is still gray but a muted colour photo is not.
_CHROMATIC_FRACTION = 0.01
# Scan decodes JPEGs at a reduced DCT scale; 128 px is plenty to judge chroma.
_SCAN_DECODE_SIZE = 128


class SkippedImage(Exception):
    """A file that cannot serve as a training image; ``reason`` is one of ``SKIP_REASONS``,
    ``detail`` (optional) says more, e.g. which limit a decompression bomb broke."""

    def __init__(
        self, reason: str, path: str | os.PathLike[str] | None = None, detail: str | None = None
    ) -> None:
        if reason not in SKIP_REASONS:
            raise ValueError(f"unknown skip reason {reason!r}; expected one of {SKIP_REASONS}")
        self.reason, self.path, self.detail = reason, path, detail
        super().__init__(f"{path}: {self.described}" if path is not None else self.described)

    @property
    def described(self) -> str:
        """The reason with its detail: ``decompression bomb (over the 1000-megapixel ...)``."""
        return self.reason if self.detail is None else f"{self.reason} ({self.detail})"


# Pillow's own decompression-bomb guard: the default limit for training data.
DEFAULT_MAX_PIXELS = 89_478_485


def bomb_note(max_megapixels: float | None, key: str) -> str:
    """What a ``decompression bomb`` skip means: ``over the 89.5-megapixel limit (KEY= raises
    it) or declaring more pixels than the file can hold``."""
    pillows = (Image.MAX_IMAGE_PIXELS or 0) / 1e6  # the guard in force: 89.5 MP unless changed
    megapixels = pillows if max_megapixels is None else max_megapixels
    return (
        f"over the {megapixels:g}-megapixel limit: {key}= raises it; or declaring more "
        "pixels than the file can hold"
    )


@contextmanager
def pixel_limit(max_megapixels: float | None) -> Iterator[None]:
    """Within it, :func:`load_rgb` refuses images over ``max_megapixels`` (None: Pillow's own
    limit, about 89 MP, the guard for training data), and Pillow's own guard is lifted to it.

    Pillow's limit is process-wide, so this is for a process (or DataLoader worker) where no
    other thread decodes images with another limit meanwhile, as in ``colorizer.colorize``.
    """
    if max_megapixels is None:
        yield
        return
    before = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = int(max_megapixels * 1e6)
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = before


def load_rgb(
    path: str | os.PathLike[str], *, min_size: int = 16, decode_size: int | None = None
) -> torch.Tensor:
    """Decode an image file to sRGB (an embedded ICC profile applied), upright, composited on
    white.

    Args:
        path: the image file.
        min_size: refuse images whose shorter side is below this many pixels.
        decode_size: if given, JPEGs may be decoded at a reduced DCT scale (1/2, 1/4, 1/8)
            whose shorter side is still at least this many pixels; other formats decode
            at full size. A large speed-up when training at a small resolution.

    Returns:
        uint8 tensor ``[3, H, W]`` in [0, 255], EXIF orientation applied.

    Raises:
        SkippedImage: empty, not an image, truncated or corrupt, decompression bomb, too small.
    """
    rgb = _decode(Path(path), min_size, decode_size, _to_rgb_array)
    return torch.from_numpy(rgb).permute(2, 0, 1).contiguous()


def load_photo(path: str | os.PathLike[str], *, min_size: int = 16, page: int = 0) -> torch.Tensor:
    """Decode an image file as :func:`load_rgb` does, but keep a grayscale one gray and at its
    depth: uint8 ``[1, H, W]`` (8-bit gray), uint16 ``[1, H, W]`` in [0, 65535] (16-bit gray,
    or gray whose ICC profile is not sRGB's: converted to sRGB gray at 16 bits), uint16
    ``[3, H, W]`` (16-bit RGB PNG or TIFF, sRGB or untagged), else uint8 ``[3, H, W]`` sRGB;
    upright. A third of the memory for a gray scan, and all of a 16-bit
    master's tones. ``page``: which page of a multi-page file (TIFF), from 0.
    """
    array = _decode(Path(path), min_size, None, _to_photo_array, page, deep=True)
    image = torch.from_numpy(array)
    return image[None] if image.dim() == 2 else image.permute(2, 0, 1).contiguous()


def _decode(
    path: Path,
    min_size: int,
    decode_size: int | None,
    to_array: Callable[[Image.Image], np.ndarray],
    page: int = 0,
    deep: bool = False,
) -> np.ndarray:
    """Open ``path`` with the guards of :func:`load_rgb`, decode its ``page``, ``to_array``
    it; ``deep``: a 16-bit colour file comes back as it is, uint16 ``[H, W, 3]`` sRGB."""
    file_bytes = path.stat().st_size
    if file_bytes == 0:
        raise SkippedImage("empty file", path)
    try:
        image = Image.open(path)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise SkippedImage("decompression bomb", path, _over_the_limit()) from error
    except UnidentifiedImageError as error:
        raise SkippedImage("not an image", path) from error
    except _ACCESS_ERRORS:
        raise
    except _CORRUPT_ERRORS as error:
        raise SkippedImage("truncated or corrupt", path) from error

    with image:
        if page:
            try:
                image.seek(page)
            except (EOFError, *_CORRUPT_ERRORS) as error:
                raise SkippedImage("truncated or corrupt", path, f"no page {page + 1}") from error
        pixels = image.width * image.height
        limit = Image.MAX_IMAGE_PIXELS
        if limit is not None and pixels > limit:
            raise SkippedImage("decompression bomb", path, _over_the_limit())
        if pixels > PLAUSIBILITY_FLOOR and pixels > PLAUSIBLE_PIXELS_PER_BYTE * file_bytes:
            detail = (
                f"declares {image.width} x {image.height} pixels in {file_bytes} bytes, more "
                f"than {PLAUSIBLE_PIXELS_PER_BYTE} per byte"
            )
            raise SkippedImage("decompression bomb", path, detail)
        if min(image.size) < min_size:
            raise SkippedImage("too small", path)
        try:
            if deep and is_16_bit_colour(image, path):
                return read_16_bit_colour(path, page, orientation_of(image))
            if decode_size is not None:
                # JPEG only (a no-op elsewhere). The whole entropy stream is still decoded, so a
                # truncated file raises here just as at full size (checked in the tests).
                image.draft(None, (decode_size, decode_size))
            # Relies on PIL's default LOAD_TRUNCATED_IMAGES=False: a cut file raises, never
            # comes back half gray. This module never changes that setting.
            image.load()
            _upright(image)
            return to_array(to_srgb(image, path))
        except _ACCESS_ERRORS:
            raise
        except _CORRUPT_ERRORS as error:
            raise SkippedImage("truncated or corrupt", path) from error


def _over_the_limit() -> str:
    """The detail of a refusal by the pixel limit: the limit and the key that raises it."""
    limit = Image.MAX_IMAGE_PIXELS or 0
    return f"over the {limit / 1e6:g}-megapixel limit: max_megapixels= raises it"


def _upright(image: Image.Image) -> None:
    """Apply the EXIF orientation to a loaded image, in place."""
    try:
        ImageOps.exif_transpose(image, in_place=True)
    except _CORRUPT_ERRORS:
        # Malformed EXIF does not make the pixels unusable: keep them as stored.
        log.debug("ignoring unreadable EXIF orientation in %s", image.filename)


def _to_photo_array(image: Image.Image) -> np.ndarray:
    """A loaded PIL image -> uint8 ``[H, W]`` (gray), uint16 ``[H, W]`` (16-bit gray) or uint8
    ``[H, W, 3]`` (anything else, as :func:`_to_rgb_array`)."""
    if image.mode == "L" or (image.mode.startswith("I;16") and not image.has_transparency_data):
        gray = np.asarray(image)
        return gray if gray.dtype == np.uint8 else gray.astype(np.uint16)  # I;16B: big-endian
    return _to_rgb_array(image)


def _to_rgb_array(image: Image.Image) -> np.ndarray:
    """Convert a loaded PIL image of any mode to a uint8 ``[H, W, 3]`` array."""
    if image.mode == "I" or image.mode.startswith("I;16"):
        # 16-bit data spans 0..65535; PIL's convert("L") clips at 255, turning most of the
        # picture white, so scale instead (with rounding: 65535 -> 255, 32768 -> 128).
        values = np.clip(np.asarray(image).astype(np.int64), 0, 65535)
        return _gray_to_rgb(((values * 255 + 32767) // 65535).astype(np.uint8))
    if image.mode == "F":
        values = np.nan_to_num(np.asarray(image, dtype=np.float32))
        # Float images follow the [0, 1] convention when they fit it, else PIL's 0..255.
        if values.size and values.max() <= 1.0:
            values = values * 255.0
        return _gray_to_rgb(np.clip(np.rint(values), 0, 255).astype(np.uint8))
    if image.has_transparency_data:
        # Transparent regions have arbitrary colour underneath; white is what viewers show.
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.array(Image.alpha_composite(white, rgba).convert("RGB"))
    # CMYK (including Adobe's inverted JPEGs), palette, L, 1, YCbCr, LAB, HSV.
    return np.array(image.convert("RGB"))


def _gray_to_rgb(gray: np.ndarray) -> np.ndarray:
    return np.repeat(gray[:, :, None], 3, axis=2)


def is_grayscale(image: torch.Tensor) -> bool:
    """Whether an RGB image carries (almost) no colour.

    Args:
        image: uint8 ``[3, H, W]`` in [0, 255] (or uint16, judged on the same scale).

    Returns:
        True when fewer than 1% of pixels spread by more than 12 levels across R, G, B;
        robust to the small chroma noise of JPEG-compressed gray photographs.
    """
    if image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"expected an RGB image [3, H, W], got shape {tuple(image.shape)}")
    wide = image.to(torch.int32)  # PyTorch has no uint16 max on the CPU
    spread = wide.amax(dim=0) - wide.amin(dim=0)
    levels = _CHROMA_LEVELS * (257 if image.dtype == torch.uint16 else 1)
    chromatic = (spread > levels).float().mean().item()
    return chromatic < _CHROMATIC_FRACTION


@dataclass(frozen=True)
class ScanResult:
    """Outcome of validating a set of files: the usable ones and why the others were skipped."""

    paths: list[Path]
    rejected: dict[Path, str] = field(default_factory=dict)

    @property
    def skipped(self) -> Counter[str]:
        return Counter(self.rejected.values())

    @property
    def found(self) -> int:
        return len(self.paths) + len(self.rejected)


def scan_images(
    paths: Iterable[str | os.PathLike[str]],
    *,
    min_size: int = 16,
    exclude_grayscale: bool = True,
    workers: int | None = None,
) -> ScanResult:
    """Validate every file once, in a thread pool (PIL releases the GIL while decoding).

    JPEGs are decoded at a reduced DCT scale, which still reads the whole file, so the
    verdict matches what :func:`load_rgb` will do later. Grayscale sources are excluded by
    default: as training targets they teach the model that "no colour" is right.

    Returns:
        ScanResult with the usable paths sorted and the reason for each skipped file.
    """
    unique = sorted({Path(p) for p in paths})
    workers = workers or min(8, os.cpu_count() or 1)
    probe = partial(_probe, min_size=min_size, exclude_grayscale=exclude_grayscale)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        reasons = list(pool.map(probe, unique))
    usable = [path for path, reason in zip(unique, reasons, strict=True) if reason is None]
    rejected = {
        path: reason for path, reason in zip(unique, reasons, strict=True) if reason is not None
    }
    for path, reason in rejected.items():
        log.debug("skipping %s: %s", path, reason)
    return ScanResult(usable, rejected)


def _probe(path: Path, *, min_size: int, exclude_grayscale: bool) -> str | None:
    try:
        image = load_rgb(path, min_size=min_size, decode_size=_SCAN_DECODE_SIZE)
    except SkippedImage as skipped:
        return skipped.reason
    if exclude_grayscale:
        # Judge chroma on at most ~256 px per side: enough pixels, far less work.
        stride = max(1, max(image.shape[1:]) // 256)
        if is_grayscale(image[:, ::stride, ::stride]):
            return "grayscale"
    return None


def list_image_files(
    root: str | os.PathLike[str], extensions: frozenset[str] = IMAGE_EXTENSIONS
) -> list[Path]:
    """Every image file under ``root``, recursively, sorted; hidden files and folders skipped.

    ``extensions`` match case-insensitively, so ``IMG_0001.JPG`` counts.
    """
    found = []
    for directory, subdirs, files in os.walk(root):
        # Pruning in place stops os.walk from descending into .git, .cache and the like.
        subdirs[:] = [name for name in subdirs if not name.startswith(".")]
        for name in files:
            if not name.startswith(".") and Path(name).suffix.lower() in extensions:
                found.append(Path(directory) / name)
    return sorted(found)


def format_reasons(counts: Mapping[str, int], order: Sequence[str] = SKIP_REASONS) -> str:
    """``"2 truncated or corrupt, 1 grayscale"``: what was refused and why, in one phrase.

    Most frequent first; ties in the order of ``order`` (this module's vocabulary by default),
    then alphabetically. Every data source counts its refusals (skipped files, failed URLs,
    unreadable annotation entries) with this one formatter.
    """
    rank = {reason: i for i, reason in enumerate(order)}
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], rank.get(kv[0], len(rank)), kv[0]))
    return ", ".join(f"{count} {reason}" for reason, count in ranked if count)


def format_summary(split: str, found: int, result: ScanResult) -> str:
    """One log line, e.g. ``"train: 120 found, 117 used, 3 skipped (2 truncated or corrupt,
    1 grayscale)"``. ``found`` counts candidate files, which may exceed those scanned."""
    used = len(result.paths)
    skipped = found - used
    line = f"{split}: {found} found, {used} used, {skipped} skipped"
    reasons = format_reasons(result.skipped)
    unexplained = skipped - sum(result.skipped.values())
    if unexplained > 0:
        reasons = f"{reasons}, {unexplained} other" if reasons else f"{unexplained} other"
    return f"{line} ({reasons})" if reasons else line
