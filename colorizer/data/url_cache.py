"""URL lists and img2dataset's cache: reading lists, outcomes by reason, safe downloads.

Helpers of :mod:`colorizer.data.internet`, kept apart so that the datamodule reads in one sitting.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import signal
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple
from urllib.parse import urlsplit

import pandas as pd
from PIL import Image

from colorizer.errors import DataError

log = logging.getLogger(__name__)

LIST_FORMATS = (".txt", ".csv", ".parquet")
# OpenCV (img2dataset's decoder) ignores EXIF and its re-encode drops it, so the orientation
# that img2dataset recorded (exifread's wording) is applied to the cached file afterwards.
_ORIENTATION = {
    "Mirrored horizontal": Image.Transpose.FLIP_LEFT_RIGHT,
    "Rotated 180": Image.Transpose.ROTATE_180,
    "Mirrored vertical": Image.Transpose.FLIP_TOP_BOTTOM,
    "Mirrored horizontal then rotated 90 CCW": Image.Transpose.TRANSPOSE,
    "Rotated 90 CW": Image.Transpose.ROTATE_270,
    "Mirrored horizontal then rotated 90 CW": Image.Transpose.TRANSVERSE,
    "Rotated 90 CCW": Image.Transpose.ROTATE_90,
}


# img2dataset's error messages (urllib's and OpenCV's words) -> readable failure reasons.
_REASONS = (
    (r"redirection to url", "redirect refused"),  # urllib refuses e.g. a redirect to file://
    (r"http error (\d{3})", "http {}"),
    (r"timed out", "timeout"),
    (r"image decoding error", "corrupt or not an image"),  # OpenCV: HTML pages, cut files
    (r"too large|max_image_pixels", "too large"),
    (r"too small", "too small"),
    (r"x-robots-tag", "disallowed by the site"),
    (r"urlopen error|connection|incompleteread|ssl", "connection error"),
)


class Outcome(NamedTuple):
    """What happened to one URL: the cached image file, or why there is none."""

    file: Path | None
    reason: str | None


def failure_reason(message: str | None) -> str:
    """A readable category for one of img2dataset's ``error_message`` values (first match)."""
    text = (message or "").lower()
    for pattern, reason in _REASONS:
        if match := re.search(pattern, text):
            return reason.format(*match.groups())
    return "other"


def read_url_list(path: Path) -> tuple[list[str], Counter[str], int]:
    """Read a .txt (one URL a line, ``#`` comments) or a .csv / .parquet with a ``url`` column.

    Returns:
        The http(s) URLs in list order without duplicates, the others counted by reason
        (never fetched: ``file://``, ``ftp://``, ``data:`` ...), and how many duplicates went.
    """
    suffix = path.suffix.lower()
    if not path.is_file():
        raise DataError(
            f"data.urls={path} does not exist: give a .txt/.csv/.parquet list of image URLs"
        )
    if suffix not in LIST_FORMATS:
        raise DataError(f"data.urls={path}: unsupported list format: give a .txt, .csv or .parquet")
    if suffix == ".txt":
        lines = (line.strip() for line in path.read_text(encoding="utf-8").splitlines())
        entries = [line for line in lines if line and not line.startswith("#")]
    else:
        table = pd.read_parquet(path) if suffix == ".parquet" else pd.read_csv(path, dtype=str)
        if "url" not in table.columns:
            raise DataError(
                f"data.urls={path} has no 'url' column (it has: {', '.join(map(str, table))}): "
                "name the column of image URLs 'url'"
            )
        entries = [url.strip() for url in table["url"].dropna().astype(str) if url.strip()]
    if not entries:
        raise DataError(f"data.urls={path} contains no URLs: add image URLs, one per line or row")
    unique = list(dict.fromkeys(entries))
    accepted, rejected = [], Counter[str]()
    for url in unique:
        parts = urlsplit(url)
        if parts.scheme.lower() not in ("http", "https"):
            rejected["not http/https"] += 1
        elif not parts.hostname:
            rejected["malformed"] += 1
        else:
            accepted.append(url)
    return accepted, rejected, len(entries) - len(unique)


def read_outcomes(shards: Path, in_tars: bool = False) -> dict[str, Outcome]:
    """URL -> outcome over every complete shard (one whose ``_stats.json`` exists).

    A later shard's try overrides an earlier one; a success whose image file has been deleted
    counts as never tried, so it is fetched again. ``in_tars``: img2dataset wrote WebDataset
    tar files; an image's file is then ``SHARD.tar/KEY.jpg``, the member of its tar.
    """
    outcomes: dict[str, Outcome] = {}
    for stats in sorted(shards.glob("*_stats.json")):
        shard = stats.name.removesuffix("_stats.json")
        table = pd.read_parquet(
            shards / f"{shard}.parquet", columns=["url", "key", "status", "error_message"]
        )
        tar = shards / f"{shard}.tar"
        for row in table.itertuples():
            file = (tar if in_tars else shards / shard) / f"{row.key}.jpg"
            if row.status != "success":
                outcomes[row.url] = Outcome(None, failure_reason(row.error_message))
            elif (tar if in_tars else file).is_file():
                outcomes[row.url] = Outcome(file, None)
            else:
                outcomes.pop(row.url, None)
    return outcomes


def recorded_orientations(shard_table: Path) -> dict[str, Image.Transpose]:
    """Key -> the flip or rotation that makes the image upright, for a shard's images whose
    original EXIF orientation was not upright."""
    table = pd.read_parquet(shard_table, columns=["key", "status", "exif"])
    turns = {}
    for row in table[table.status == "success"].itertuples():
        exif = json.loads(row.exif) if isinstance(row.exif, str) else {}
        orientation = exif.get("Image Orientation")
        if orientation in _ORIENTATION:
            turns[row.key] = _ORIENTATION[orientation]
    return turns


def apply_recorded_orientation(shard_table: Path) -> None:
    """Rotate or flip a new shard's images as their original EXIF orientation said."""
    for key, turn in recorded_orientations(shard_table).items():
        file = shard_table.with_suffix("") / f"{key}.jpg"
        with Image.open(file) as image:
            upright = image.transpose(turn)
        upright.save(file, quality=95)


def default_cache_dir(urls: Path, download_size: int | None) -> Path:
    """``$XDG_CACHE_HOME/colorizer/internet/<list name>-<hash of its path>-<size>``.

    Keyed by the list's path, not its content, so editing a list in place reuses its cache
    (only new URLs are fetched); keyed by the download size, so changing it starts afresh.
    """
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    digest = hashlib.blake2b(str(urls).encode(), digest_size=4).hexdigest()
    size = f"{download_size}px" if download_size else "full"
    return base / "colorizer" / "internet" / f"{urls.stem}-{digest}-{size}"


@contextmanager
def download_scope(max_pixels: int) -> Iterator[None]:
    """Cap OpenCV's decoder in img2dataset's workers; undo img2dataset's process-wide changes.

    OpenCV compares ``OPENCV_IO_MAX_IMAGE_PIXELS`` with the header before decoding, so a bomb
    is never expanded; the spawned worker processes inherit the variable. img2dataset also
    installs a SIGINT handler that exits with status 0: Ctrl-C while training must stay a
    KeyboardInterrupt, so the previous handler comes back.
    """
    previous_limit = os.environ.get("OPENCV_IO_MAX_IMAGE_PIXELS")
    previous_handler = signal.getsignal(signal.SIGINT)
    os.environ["OPENCV_IO_MAX_IMAGE_PIXELS"] = str(max_pixels)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous_handler)
        if previous_limit is None:
            del os.environ["OPENCV_IO_MAX_IMAGE_PIXELS"]
        else:
            os.environ["OPENCV_IO_MAX_IMAGE_PIXELS"] = previous_limit
