"""A pre-resized copy of the training images, made once and reused by every run and epoch.

Decoding a ~1024 px original costs ~7 ms of a worker's time on a 2-core CPU; a copy just
large enough for the training crops decodes ~10-20x faster (README, Speed). "Large enough" is an
area: a random crop takes a fraction of the image's area, so a copy holds ``side²`` pixels
whatever its aspect ratio (a 16:9 photo is not kept at 1.8x the pixels of a square one),
with the shorter side never below the crop size. The copy is keyed by each original's path,
size and modification time, in a folder per resolution, so an edited photo is re-made and
several image sizes can share one cache.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from PIL import Image
from torchvision.transforms.v2 import functional as TF

from colorizer.data.images import SkippedImage, load_rgb

log = logging.getLogger(__name__)

CACHE_QUALITY = 95  # JPEG quality; with 4:4:4 chroma, as chroma is what the models learn


def cache_side(image_size: int, min_crop_scale: float) -> int:
    """Side of the square whose area lets a square crop of ``min_crop_scale`` of it reach
    ``image_size`` without being enlarged."""
    return math.ceil(image_size / math.sqrt(min_crop_scale))


def cache_folder(cache_dir: str | Path, side: int, min_side: int) -> Path:
    """Where the copies of ``side``² pixels live (each resolution has its own folder)."""
    return Path(cache_dir).expanduser().resolve() / f"area{side}_min{min_side}"


def copy_size(height: int, width: int, side: int, min_side: int) -> tuple[int, int]:
    """(height, width) of the copy: ``side``² pixels at the same aspect ratio, the shorter
    side at least ``min_side``, never enlarged."""
    scale = min(1.0, max(side / math.sqrt(height * width), min_side / min(height, width)))
    return max(1, round(height * scale)), max(1, round(width * scale))


def reduce_to_area(image: torch.Tensor, side: int, min_side: int) -> torch.Tensor:
    """uint8 ``[3, H, W]`` reduced to :func:`copy_size` (antialiased), or as it is if no
    larger."""
    size = copy_size(image.shape[1], image.shape[2], side, min_side)
    if size == tuple(image.shape[1:]):
        return image
    return TF.resize(image, list(size), antialias=True)


def resized_copies(
    paths: Sequence[Path], cache_dir: str | Path, side: int, min_side: int
) -> list[Path]:
    """A copy of each image reduced to ``copy_size`` (never enlarged), made if missing; an
    image that cannot be read keeps its original path (the dataset skips it as it would
    have).

    Returns:
        The copies' paths, in the order of ``paths``.
    """
    folder = cache_folder(cache_dir, side, min_side)
    folder.mkdir(parents=True, exist_ok=True)
    targets = [folder / f"{_key(path)}.jpg" for path in paths]
    missing = [(p, t) for p, t in zip(paths, targets, strict=True) if not t.exists()]
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        made = list(pool.map(lambda job: _make_copy(*job, side, min_side), missing))
    failed = {source for (source, _), ok in zip(missing, made, strict=True) if not ok}
    log.info(
        "resized cache %s: %d images at %d² px (%d made in %.1f s, %d reused)",
        folder, len(paths), side, len(missing) - len(failed), time.perf_counter() - start,
        len(paths) - len(missing),
    )  # fmt: skip
    return [p if p in failed else t for p, t in zip(paths, targets, strict=True)]


def _key(path: Path) -> str:
    stat = path.stat()
    identity = f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
    return hashlib.blake2b(identity.encode(), digest_size=12).hexdigest()


def _make_copy(source: Path, target: Path, side: int, min_side: int) -> bool:
    try:
        # The copy's shorter side is at most ``side``: a JPEG decoded no smaller holds enough.
        image = load_rgb(source, min_size=1, decode_size=side)
    except (SkippedImage, OSError) as error:
        log.warning("not cached (%s): the original will be read", error)
        return False
    image = reduce_to_area(image, side, min_side)
    partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
    try:
        pixels = Image.fromarray(image.permute(1, 2, 0).numpy())
        pixels.save(partial, format="JPEG", quality=CACHE_QUALITY, subsampling=0)
        os.replace(partial, target)  # concurrent runs may race: each write is whole
    finally:
        partial.unlink(missing_ok=True)
    return True
