"""Writing one shard of ``colorizer.prepare``: decode, check, reduce and store its images.

Made in ``colorizer.prepare``'s threads, several shards at once: each shard is written to a
temporary file and renamed when whole, then recorded (``.prepare/NAME.json``) so that an
interrupted or repeated prepare skips it.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import logging
import os
import re
import tarfile
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from colorizer.data.cache import CACHE_QUALITY, reduce_to_area
from colorizer.data.images import SkippedImage, is_grayscale, load_rgb
from colorizer.data.url_cache import recorded_orientations

log = logging.getLogger(__name__)

WORK = ".prepare"  # a record per shard made: an interrupted or repeated prepare skips it
SHARD_NAME = re.compile(r"(train|val|test)-\d{6}\.tar")


@dataclass(frozen=True)
class ShardJob:
    """One shard to write: its images (name recorded, file read) and the rules."""

    output: str
    name: str
    first_key: int
    images: list[tuple[str, str]]  # (source name, file to read)
    side: int
    min_side: int
    min_size: int
    exclude_grayscale: bool
    max_megapixels: float | None

    def fingerprint(self) -> str:
        """Changes when the shard's images, their files or the resolution change."""
        parts = [self.side, self.min_side, self.min_size, self.exclude_grayscale,
                 self.max_megapixels, CACHE_QUALITY]  # fmt: skip
        for name, file in self.images:
            archive, _, member = file.rpartition(".tar/")
            try:
                # An image inside one of img2dataset's tars: that tar, and which member.
                stat = os.stat(f"{archive}.tar" if archive else file)
                parts.append((name, member, stat.st_size, stat.st_mtime_ns))
            except OSError:
                parts.append((name, None, None))
        return hashlib.blake2b(json.dumps(parts).encode(), digest_size=16).hexdigest()


def write_shard(job: ShardJob) -> dict[str, Any]:
    """Decode, check and reduce each image of ``job``, write its tar shard (whole or not at
    all) and its record; returns the record (images, bytes, SHA-256, what was skipped)."""
    output = Path(job.output)
    fingerprint = job.fingerprint()
    skipped: Counter[str] = Counter()
    partial = output / f".{job.name}.{os.getpid()}.partial"
    images = 0
    archives = _Archives()
    try:
        with tarfile.open(partial, "w", format=tarfile.USTAR_FORMAT) as tar:
            for offset, (name, file) in enumerate(job.images):
                try:  # under the caller's pixel_limit(job.max_megapixels)
                    image = _read(file, job.min_size, job.side, archives)
                except (SkippedImage, OSError) as error:
                    skipped[getattr(error, "reason", "unreadable")] += 1
                    log.warning("not prepared: %s", error)
                    continue
                if job.exclude_grayscale and is_grayscale(image):
                    skipped["grayscale"] += 1
                    continue
                image = reduce_to_area(image, job.side, job.min_side)
                key = f"{job.first_key + offset:09d}"
                meta = {"source": name, "height": image.shape[1], "width": image.shape[2]}
                _add(tar, f"{key}.jpg", _jpeg(image))
                _add(tar, f"{key}.json", json.dumps(meta).encode())
                images += 1
        digest = hashlib.sha256()
        with open(partial, "rb") as file:
            for chunk in iter(lambda: file.read(8 << 20), b""):
                digest.update(chunk)
        size = partial.stat().st_size
        os.replace(partial, output / job.name)
    finally:
        archives.close()
        partial.unlink(missing_ok=True)
    record = {"name": job.name, "images": images, "bytes": size, "sha256": digest.hexdigest(),
              "skipped": dict(skipped), "fingerprint": fingerprint}  # fmt: skip
    write_json(output / WORK / f"{job.name}.json", record)
    return record


class _Archives:
    """img2dataset's tars a shard's images are read from, each opened and its member table
    read once (``extractfile(name)`` alone would scan the headers of a 10,000-image tar for
    every image)."""

    def __init__(self) -> None:
        self._open: dict[str, tuple[tarfile.TarFile, dict[str, tarfile.TarInfo]]] = {}

    def read(self, archive: str, member: str) -> bytes:
        if archive not in self._open:
            tar = tarfile.open(archive)  # noqa: SIM115 (closed by close())
            self._open[archive] = (tar, {info.name: info for info in tar.getmembers()})
        tar, members = self._open[archive]
        data = tar.extractfile(members[member]) if member in members else None
        if data is None:
            raise OSError(f"{archive}/{member}: no such image in the archive")
        return data.read()

    def close(self) -> None:
        for tar, _ in self._open.values():
            tar.close()
        self._open.clear()


def _read(file: str, min_size: int, side: int, archives: _Archives):
    """uint8 ``[3, H, W]`` of a file, or of an image inside one of img2dataset's tars
    (``SHARD.tar/KEY.jpg``), turned upright as its original's EXIF said."""
    archive, _, member = file.rpartition(".tar/")
    if not archive:
        return load_rgb(file, min_size=min_size, decode_size=side)
    data = archives.read(f"{archive}.tar", member)
    turn = _orientations(f"{archive}.parquet").get(member.partition(".")[0])
    # Through a file: the same guarded loader (size, bomb and corruption checks) as files.
    with tempfile.NamedTemporaryFile(suffix=Path(member).suffix) as copy:
        copy.write(data)
        copy.flush()
        if turn is not None:
            with Image.open(copy.name) as image:
                image.transpose(turn).save(copy.name, format="JPEG", quality=CACHE_QUALITY)
        return load_rgb(copy.name, min_size=min_size, decode_size=side)


@functools.lru_cache(maxsize=8)
def _orientations(table: str) -> dict:
    return recorded_orientations(Path(table))


def _jpeg(image) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image.permute(1, 2, 0).numpy()).save(
        buffer, format="JPEG", quality=CACHE_QUALITY, subsampling=0
    )
    return buffer.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), 0o644, 0  # the same bytes every time
    tar.addfile(info, io.BytesIO(data))


def write_json(path: Path, data: Any) -> None:
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(partial, path)
