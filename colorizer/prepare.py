"""Prepare any image source once into shards: ``python -m colorizer.prepare data=curated
data.root=PHOTOS output=SHARDS`` (also ``colorizer-prepare``); train with ``data=shards
data.root=SHARDS`` (README, Train at scale).

The source's own rules decide what goes in: its splits (folders, seeded split, COCO's
annotations, the URL split), its checks (unreadable, too small, bombs and grayscale images
skipped and counted). Each image is decoded once more, reduced to the area the training
crops need at ``data.image_size`` (the resized cache's rule) and stored as a JPEG in a
WebDataset tar shard (:mod:`colorizer.data.shards`). Shards are made in parallel, a thread
per core (decoding, resizing and encoding release the GIL), each from a fixed run of the
split's sorted images, so the output is the same whatever the number of threads; an
interrupted prepare, run again, makes only the shards it had not finished (and remakes one
whose images changed); run again when done, it makes nothing. The manifest is written
last: a folder without one was not finished. A URL list is downloaded by img2dataset into
tar files in the source's cache folder (``tars/``), not one file per URL, and prepared from
there.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from colorizer.cli import run_app
from colorizer.data.base import TRAIN_CROP_SCALE
from colorizer.data.cache import cache_side
from colorizer.data.images import format_reasons, pixel_limit
from colorizer.data.shard_store import MANIFEST
from colorizer.data.shard_writer import SHARD_NAME, WORK, ShardJob, write_json, write_shard
from colorizer.data.shards import FORMAT, SPLITS, VERSION
from colorizer.errors import ConfigError, require_int
from colorizer.registry import DATA_SOURCES

log = logging.getLogger(__name__)

LAYOUT = (
    "WebDataset tar shards: <key>.jpg (RGB JPEG, quality 95, 4:4:4, reduced to side² pixels, "
    "shorter side >= min_side, never enlarged) and <key>.json ({source, height, width})"
)


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
    try:
        output.mkdir(parents=True, exist_ok=True)
        (output / MANIFEST).unlink(missing_ok=True)  # not finished until it is written again
    except FileExistsError as error:
        raise ConfigError(f"output={output} is a file: name a folder for the shards") from error
    except PermissionError as error:
        raise ConfigError(f"output={output} cannot be written: {error.strerror}") from error
    splits, names = _source_splits(datamodule)
    side = cache_side(datamodule.image_size, TRAIN_CROP_SCALE[0])
    # Keys count on across the splits: no two images of the dataset share one.
    offsets = dict(zip(SPLITS, itertools.accumulate((len(splits[s]) for s in SPLITS),
                                                    initial=0), strict=False))  # fmt: skip
    jobs = [
        ShardJob(
            str(output), f"{split}-{number:06d}.tar", offsets[split] + first,
            _chunk(names[split], files, first, shard_images), side, datamodule.image_size,
            datamodule.min_size, datamodule.exclude_grayscale, datamodule.max_megapixels,
        )
        for split, files in splits.items()
        for number, first in enumerate(range(0, len(files), shard_images))
    ]  # fmt: skip
    results = _run_jobs(jobs, output, workers)
    manifest = _manifest(cfg, datamodule, source_name, splits, jobs, results, side)
    manifest["seconds"] = round(time.perf_counter() - start, 1)
    write_json(output / MANIFEST, manifest)
    # Shards an earlier prepare made here (it left their records) that this one has not:
    # the dataset has fewer images now. Other files in the folder are left alone.
    made = {job.name for job in jobs}
    for record in sorted((output / WORK).glob("*.tar.json")):
        name = record.name.removesuffix(".json")
        if name not in made and SHARD_NAME.fullmatch(name):
            (output / name).unlink(missing_ok=True)
            record.unlink()
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
    # Threads: decoding, resizing and encoding release the GIL (as in the folder scan), and
    # threads start at once where processes would each import PyTorch first. Pillow's pixel
    # limit is the process's: set once for all of them.
    pool = ThreadPoolExecutor(max_workers=min(workers, len(pending)))
    try:
        with pixel_limit(pending[0].max_megapixels):
            for job, record in zip(pending, pool.map(write_shard, pending), strict=True):
                results[job.name] = record
    finally:  # stopped (Ctrl+C): the shards being written are finished, no others started
        pool.shutdown(wait=True, cancel_futures=True)
    return results


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


def main() -> None:
    run_app(prepare, config_name="prepare")


if __name__ == "__main__":
    main()
