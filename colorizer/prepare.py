"""Prepare any image source once into shards: ``python -m colorizer.prepare data=curated
data.root=PHOTOS output=SHARDS`` (also ``colorizer-prepare``); train with ``data=shards
data.root=SHARDS`` (README, Train at scale).

The source's own rules decide what goes in: its splits (folders, seeded split, COCO's
annotations, the URL split), its checks (unreadable, too small, bombs and grayscale images
skipped and counted). Each image is decoded once more, reduced to the area the training
crops need at ``data.image_size`` (the resized cache's rule) and stored as a JPEG in a
WebDataset tar shard (:mod:`colorizer.data.shards`). Shards are made in parallel, one
process per core, each from a fixed run of the split's sorted images, so the output is the
same whatever the number of processes; an interrupted prepare, run again, makes only the
shards it had not finished (and remakes one whose images changed); run again when done, it
makes nothing. The manifest is written last: a folder without one was not finished. A URL
list is downloaded by img2dataset into tar files in the source's cache folder (``tars/``),
not one file per URL, and prepared from there.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import logging
import multiprocessing
import os
import tarfile
import tempfile
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from PIL import Image

from colorizer.cli import run_app
from colorizer.data.base import TRAIN_CROP_SCALE
from colorizer.data.cache import CACHE_QUALITY, cache_side, reduce_to_area
from colorizer.data.images import SkippedImage, format_reasons, is_grayscale, load_rgb, pixel_limit
from colorizer.data.shard_store import MANIFEST
from colorizer.data.shards import FORMAT, SPLITS, VERSION
from colorizer.data.url_cache import recorded_orientations
from colorizer.errors import ConfigError, require_int
from colorizer.registry import DATA_SOURCES

log = logging.getLogger(__name__)

WORK = ".prepare"  # a record per shard made: an interrupted or repeated prepare skips it
LAYOUT = (
    "WebDataset tar shards: <key>.jpg (RGB JPEG, quality 95, 4:4:4, reduced to side² pixels, "
    "shorter side >= min_side, never enlarged) and <key>.json ({source, height, width})"
)


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
        parts = [self.side, self.min_side, self.min_size, self.exclude_grayscale, CACHE_QUALITY]
        for name, file in self.images:
            try:
                stat = os.stat(file)
                parts.append((name, stat.st_size, stat.st_mtime_ns))
            except OSError:
                parts.append((name, None, None))
        return hashlib.blake2b(json.dumps(parts).encode(), digest_size=16).hexdigest()


def prepare(cfg: DictConfig) -> dict[str, Any]:
    """Write ``cfg.output``'s shards and manifest from ``cfg.data``; returns the manifest."""
    start = time.perf_counter()
    if cfg.get("output") in (None, ""):
        raise ConfigError("output is required: output=DIR, the folder to write the shards to")
    output = Path(str(cfg.output)).expanduser().resolve()
    shard_images = require_int("shard_images", cfg.shard_images, 1)
    workers = cfg.workers if cfg.workers is not None else (os.cpu_count() or 1)
    require_int("workers", workers, 1)
    datamodule = instantiate(cfg.data)
    source_name = DATA_SOURCES.name_or_fail(datamodule)
    if not hasattr(datamodule, "find_splits"):
        raise ConfigError(f"data={source_name} has no image files to prepare: use data=curated, "
                          "coco or internet")  # fmt: skip
    output.mkdir(parents=True, exist_ok=True)
    (output / MANIFEST).unlink(missing_ok=True)  # the folder is not finished until it is back
    splits, names = _source_splits(datamodule)
    side = cache_side(datamodule.image_size, TRAIN_CROP_SCALE[0])
    jobs = [
        ShardJob(
            str(output), f"{split}-{number:06d}.tar", first, _chunk(names[split], files, first,
                                                                    shard_images),
            side, datamodule.image_size, datamodule.min_size, datamodule.exclude_grayscale,
            datamodule.max_megapixels,
        )
        for split, files in splits.items()
        for number, first in enumerate(range(0, len(files), shard_images))
    ]  # fmt: skip
    results = _run_jobs(jobs, output, workers)
    manifest = _manifest(cfg, datamodule, source_name, splits, jobs, results, side)
    manifest["seconds"] = round(time.perf_counter() - start, 1)
    _write_json(output / MANIFEST, manifest)
    stale = {path.name for path in output.glob("*.tar")} - {job.name for job in jobs}
    for name in sorted(stale):  # shards of an earlier prepare with more images
        (output / name).unlink()
    counts = ", ".join(f"{manifest['splits'][s]['images']} {s}" for s in SPLITS)
    skipped = manifest["skipped"]
    log.info(
        "prepared %s: %s images in %d shards (%.1f MB) at %d² px in %.1f s%s",
        output, counts, len(jobs), manifest["bytes"] / 1e6, side, manifest["seconds"],
        f"; skipped while preparing: {format_reasons(skipped)}" if skipped else "",
    )  # fmt: skip
    return manifest


def _source_splits(datamodule: Any) -> tuple[dict[str, list[Path]], dict]:
    """Each split's files, as the source's own setup would find them, and the name each is
    recorded under (a path relative to the source's folder, or the URL)."""
    if hasattr(datamodule, "prepare_into"):  # a URL list goes to tar files, not a file per URL
        return datamodule.prepare_into(Path(datamodule.cache_dir) / "tars")
    splits = datamodule.find_splits()
    root = getattr(datamodule, "root", None)
    names = {}
    for split, files in splits.items():
        names[split] = {}
        for file in files:
            try:
                names[split][file] = file.relative_to(root).as_posix() if root else file.name
            except ValueError:
                names[split][file] = str(file)
    return splits, names


def _chunk(names: dict, files: list[Path], first: int, count: int) -> list[tuple[str, str]]:
    return [(names[file], str(file)) for file in files[first : first + count]]


def _run_jobs(jobs: list[ShardJob], output: Path, workers: int) -> dict[str, dict[str, Any]]:
    """Each job's record, made now or kept from an interrupted prepare of the same images."""
    work = output / WORK
    work.mkdir(parents=True, exist_ok=True)
    results, pending = {}, []
    for job in jobs:
        record = _read_record(work / f"{job.name}.json")
        shard = output / job.name
        if record and record["fingerprint"] == job.fingerprint() and _has_bytes(shard, record):
            results[job.name] = record
        else:
            pending.append(job)
    if len(jobs) - len(pending):
        log.info("resuming: %d of %d shards were made before", len(jobs) - len(pending), len(jobs))
    if not pending:
        return results
    if workers == 1 or len(pending) == 1:
        made = map(write_shard, pending)
        for job, record in zip(pending, made, strict=True):
            results[job.name] = record
        return results
    # Fresh interpreters: a forked copy of this process would inherit torch's thread pools.
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=min(workers, len(pending)), mp_context=context,
                             initializer=_quiet_worker) as pool:  # fmt: skip
        for job, record in zip(pending, pool.map(write_shard, pending), strict=True):
            results[job.name] = record
    return results


def _quiet_worker() -> None:
    import torch

    torch.set_num_threads(1)  # one process per core already


def write_shard(job: ShardJob) -> dict[str, Any]:
    """Decode, check and reduce each image of ``job``, write its tar shard (whole or not at
    all) and its record; returns the record (images, bytes, SHA-256, what was skipped)."""
    output = Path(job.output)
    fingerprint = job.fingerprint()
    skipped: Counter[str] = Counter()
    partial = output / f".{job.name}.{os.getpid()}.partial"
    images = 0
    try:
        with tarfile.open(partial, "w", format=tarfile.USTAR_FORMAT) as tar:
            for offset, (name, file) in enumerate(job.images):
                try:
                    with pixel_limit(job.max_megapixels):
                        image = _read(file, job.min_size, job.side)
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
        partial.unlink(missing_ok=True)
    record = {"name": job.name, "images": images, "bytes": size, "sha256": digest.hexdigest(),
              "skipped": dict(skipped), "fingerprint": fingerprint}  # fmt: skip
    _write_json(output / WORK / f"{job.name}.json", record)
    return record


def _read(file: str, min_size: int, side: int):
    """uint8 ``[3, H, W]`` of a file, or of an image inside one of img2dataset's tars
    (``SHARD.tar/KEY.jpg``), turned upright as its original's EXIF said."""
    archive, _, member = file.rpartition(".tar/")
    if not archive:
        return load_rgb(file, min_size=min_size, decode_size=side)
    with tarfile.open(f"{archive}.tar") as tar:
        data = tar.extractfile(member)
        if data is None:
            raise OSError(f"{file}: no such image in the archive")
        turn = _orientations(f"{archive}.parquet").get(member.partition(".")[0])
        # Through a file: the same guarded loader (size, bomb and corruption checks) as files.
        with tempfile.NamedTemporaryFile(suffix=Path(member).suffix) as copy:
            copy.write(data.read())
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


def _manifest(cfg, datamodule, source_name, splits, jobs, results, side) -> dict[str, Any]:
    skipped: Counter[str] = Counter(getattr(datamodule, "skipped_in_scans", Counter()))
    for record in results.values():
        skipped.update(record["skipped"])
    by_split: dict[str, dict[str, Any]] = {}
    for split in SPLITS:
        shards = [results[job.name] for job in jobs if job.name.startswith(f"{split}-")]
        by_split[split] = {
            "images": sum(shard["images"] for shard in shards),
            "shards": [
                {key: shard[key] for key in ("name", "images", "bytes", "sha256")}
                for shard in shards
            ],  # fmt: skip
        }
    settings = OmegaConf.to_container(cfg.data, resolve=True)
    where = getattr(datamodule, "urls", None) or getattr(datamodule, "root", None)
    return {
        "format": FORMAT,
        "version": VERSION,
        "layout": LAYOUT,
        "image_size": datamodule.image_size,
        "side": side,
        "min_side": datamodule.image_size,
        "source": {
            "data": source_name,
            "description": f"data={source_name} {where or 'embedded'}",
            "settings": settings,
        },  # fmt: skip
        "splits": by_split,
        "images": sum(by_split[s]["images"] for s in SPLITS),
        "bytes": sum(record["bytes"] for record in results.values()),
        "skipped": dict(skipped.most_common()),
    }


def _has_bytes(shard: Path, record: dict[str, Any]) -> bool:
    try:
        return shard.stat().st_size == record["bytes"]
    except (OSError, KeyError):
        return False


def _read_record(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _write_json(path: Path, data: Any) -> None:
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(partial, path)


def main() -> None:
    run_app(prepare, config_name="prepare")


if __name__ == "__main__":
    main()
