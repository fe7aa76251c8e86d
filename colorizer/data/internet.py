"""A list of image URLs, downloaded once into a local cache with img2dataset, read like a folder.

Cache layout (``cache_dir``)::

    shards/00000/000000003.jpg   images, re-encoded by img2dataset at ``download_size``
    shards/00000.parquet         one row per URL tried: url, key, status, error_message, exif
    shards/00000_stats.json      img2dataset's per-shard counts (written last: shard complete)
    download_report.json         what the latest run found: counts and failure reasons

The shard tables are the manifest: a URL that has a row in a complete shard is never fetched
again (a failed one only with ``retry_failed=True``), so re-running a list downloads nothing
and a changed list only its new URLs, each run adding a shard (img2dataset's "extend" mode).
URLs are untrusted input: only http(s) ones reach img2dataset, redirects lead only to
http(s), each download has a size and a time limit (:mod:`colorizer.data.url_guard`) besides
urllib's per-request timeout, and images over ``max_megapixels`` are refused from their header,
before OpenCV decodes them.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from pathlib import Path
from typing import Any

import pandas as pd

from colorizer.data.base import DataError, seeded_split
from colorizer.data.curated import SPLITS, CuratedDataModule
from colorizer.data.images import DEFAULT_MAX_PIXELS, format_reasons
from colorizer.data.url_cache import (
    Outcome,
    apply_recorded_orientation,
    default_cache_dir,
    download_scope,
    read_outcomes,
    read_url_list,
)

log = logging.getLogger(__name__)


class InternetDataModule(CuratedDataModule):
    """Images from a list of URLs, downloaded into ``cache_dir``, split by URL with a seed.

    :meth:`prepare_data` fetches the URLs the cache has not tried yet and records how many
    succeeded and why the others failed (log line and ``download_report.json``);
    :meth:`setup` validates the cached images and splits them as :class:`CuratedDataModule`
    does a folder, keyed by URL so the split does not depend on download order.

    Args:
        urls: a .txt (one URL a line), .csv or .parquet (``url`` column) list.
        cache_dir: where images and the manifest live; None: :func:`default_cache_dir`.
        download_size: shorter side of the cached images (larger ones are shrunk, smaller
            kept); None keeps the original size. Changing it affects only new downloads.
        timeout: seconds each connect / read may take (urllib's, so per step, not total).
        max_download_mb: a response larger than this many megabytes (10^6 bytes) is refused
            ("too large"), by its Content-Length or as soon as more arrives.
        max_download_seconds: a download (redirects included) whose body is not complete
            this long after the request started is abandoned ("timeout").
        retries: extra tries of a failed request within one run.
        threads, processes: img2dataset's download threads per process, and processes.
        max_megapixels: larger images are refused ("too large") before they are downloaded
            whole or decoded (None: Pillow's guard, 89.5 MP), as the folder source refuses
            them.
        retry_failed: fetch again URLs that failed in an earlier run (by default only new
            URLs are fetched, so a re-run makes no request).
        Others: as :class:`CuratedDataModule`.

    Batches: uint8 ``[B, 3, image_size, image_size]``, RGB.
    """

    source_settings = ("urls",)
    settings_retired = ("max_pixels",)  # now max_megapixels

    def __init__(
        self,
        urls: str,
        cache_dir: str | None = None,
        download_size: int | None = 512,
        timeout: float = 10,
        max_download_mb: float = 50,
        max_download_seconds: float = 60,
        retries: int = 2,
        threads: int = 16,
        processes: int = 1,
        retry_failed: bool = False,
        **folder: Any,
    ) -> None:
        self.urls = Path(os.path.abspath(Path(urls).expanduser()))
        if cache_dir is None:
            cache_dir = str(default_cache_dir(self.urls, download_size))
        super().__init__(root=cache_dir, **folder)
        self.save_hyperparameters()
        for name, value, least in (
            ("download_size", download_size or self.image_size, self.image_size),
            ("timeout", timeout, 1e-3),
            ("max_download_mb", max_download_mb, 1e-3),
            ("max_download_seconds", max_download_seconds, 1e-3),
            ("retries", retries, 0),
            ("threads", threads, 1),
            ("processes", processes, 1),
        ):
            if value < least:
                raise DataError(f"data.{name}={value!r} must be at least {least:g}")
        self.cache_dir = Path(os.path.abspath(Path(cache_dir).expanduser()))
        self.shards = self.cache_dir / "shards"
        self.max_pixels = (
            DEFAULT_MAX_PIXELS if self.max_megapixels is None else int(self.max_megapixels * 1e6)
        )
        self.max_download_bytes = int(max_download_mb * 1e6)
        self.max_download_seconds = max_download_seconds
        self.retry_failed = retry_failed
        # img2dataset.download arguments; the cache is re-encoded JPEG at download_size.
        self.download_options = {
            "image_size": download_size or 0,
            "resize_mode": "keep_ratio" if download_size else "no",
            "resize_only_if_bigger": True,
            "timeout": timeout,
            "retries": retries,
            "thread_count": threads,
            "processes_count": processes,
            "min_image_size": self.min_size,
            "max_image_area": self.max_pixels,
        }
        self.report: dict[str, Any] | None = None
        self.in_tars = False  # img2dataset writes image files (True: WebDataset tar files)

    def prepare_data(self) -> None:
        """Download what the cache lacks, then log and record what the list gave.

        Once per instance: Lightning calls it before fit, validate and test alike, and the
        report of the call that downloaded must not be overwritten by "0 fetched now".
        """
        if self.report is not None:
            return
        urls, rejected, duplicates = read_url_list(self.urls)
        outcomes = read_outcomes(self.shards, in_tars=self.in_tars)
        pending = [
            url
            for url in urls
            if url not in outcomes or (self.retry_failed and outcomes[url].file is None)
        ]
        if pending:
            self._download(pending)
            outcomes = read_outcomes(self.shards, in_tars=self.in_tars)
        self.report = self._report(urls, rejected, duplicates, outcomes, len(pending))

    def _download(self, urls: list[str]) -> None:
        # albumentations (imported by img2dataset) asks the internet for updates unless told not.
        os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
        import img2dataset

        from colorizer.data.url_guard import guarded_downloads

        self.shards.mkdir(parents=True, exist_ok=True)
        before = set(self.shards.glob("*_stats.json"))
        # Parquet, not txt: img2dataset parses txt lists as CSV, which splits URLs at commas.
        pending = self.cache_dir / "pending_urls.parquet"
        pd.DataFrame({"url": urls}).to_parquet(pending)
        log.info("internet: fetching %d URLs into %s", len(urls), self.shards)
        with (
            download_scope(self.max_pixels),
            guarded_downloads(self.max_download_bytes, self.max_download_seconds),
        ):
            img2dataset.download(
                url_list=str(pending),
                input_format="parquet",
                output_folder=str(self.shards),
                output_format="webdataset" if self.in_tars else "files",
                incremental_mode="extend",  # each run adds shards, earlier ones stay
                encode_format="jpg",
                encode_quality=95,
                distributor="multiprocessing",
                enable_wandb=False,
                **self.download_options,
            )
        pending.unlink()
        if self.in_tars:  # the orientation is applied as images are read from the tars
            return
        for stats in sorted(set(self.shards.glob("*_stats.json")) - before):
            apply_recorded_orientation(
                stats.with_name(stats.name.replace("_stats.json", ".parquet"))
            )

    def _report(
        self,
        urls: list[str],
        rejected: Counter[str],
        duplicates: int,
        outcomes: dict[str, Outcome],
        fetched: int,
    ) -> dict[str, Any]:
        # A URL with no outcome was in a shard that did not finish (killed, crashed).
        failed = {u: outcomes[u].reason if u in outcomes else "interrupted" for u in urls}
        failed = {url: reason for url, reason in failed.items() if reason is not None}
        failures = Counter(failed.values())
        examples = {r: [u for u, why in failed.items() if why == r][:3] for r in failures}
        downloaded = len(urls) - len(failed)
        total = len(urls) + rejected.total()
        line = f"internet: {total} URLs, {downloaded} downloaded, {len(failed)} failed"
        line += f" ({format_reasons(failures, order=())})" if failures else ""
        line += (
            f", {rejected.total()} rejected ({format_reasons(rejected, order=())})"
            if rejected
            else ""
        )
        line += f", {duplicates} duplicate{'s' * (duplicates > 1)} dropped" if duplicates else ""
        line += f"; {fetched} fetched now, {len(urls) - fetched} from the cache {self.cache_dir}"
        report = {
            "urls_file": str(self.urls),
            "cache_dir": str(self.cache_dir),
            "urls": total,
            "downloaded": downloaded,
            "failed": len(failed),
            "rejected": rejected.total(),
            "duplicates": duplicates,
            "fetched_now": fetched,
            "failure_reasons": dict(failures.most_common()),
            "rejection_reasons": dict(rejected.most_common()),
            "failure_examples": examples,
            "summary": line,
        }
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        (self.cache_dir / "download_report.json").write_text(json.dumps(report, indent=2) + "\n")
        log.log(logging.WARNING if failures or rejected else logging.INFO, "%s", line)
        if downloaded == 0:
            why = format_reasons(failures + rejected, order=())
            raise DataError(
                f"data.urls={self.urls}: none of its {total} URLs gave an image ({why}): fix the "
                "list or the network, then re-run with data.retry_failed=true"
            )
        return report

    def prepare_into(self, folder: Path) -> tuple[dict[str, list[Path]], dict[str, dict]]:
        """For ``colorizer.prepare``: the list downloaded into img2dataset's WebDataset tar
        files under ``folder`` (no file per URL; re-running resumes as the cache does), and
        the downloaded images split by URL and seed. Images are ``SHARD.tar/KEY.jpg`` paths
        (read from their tar, upright as their EXIF said) and are named by their URL; which
        of them are usable is decided as they are prepared (skipped ones are counted)."""
        self.cache_dir, self.shards, self.in_tars, self.report = folder, folder, True, None
        self.prepare_data()
        urls, _, _ = read_url_list(self.urls)
        outcomes = read_outcomes(self.shards, in_tars=True)
        url_of = {outcomes[u].file: u for u in urls if u in outcomes and outcomes[u].file}
        if len(url_of) < 3:
            raise DataError(
                f"data.urls={self.urls} gave {len(url_of)} image(s); a train/val/test split "
                "needs at least 3: add URLs of colour photographs"
            )
        parts = seeded_split(
            list(url_of), self.val_fraction, self.test_fraction, self.seed, key=url_of.__getitem__
        )
        splits = dict(zip(SPLITS, parts, strict=True))
        return splits, {split: {file: url_of[file] for file in splits[split]} for split in SPLITS}

    def find_splits(self) -> dict[str, list[Path]]:
        """The cached images of the list's URLs, validated once, split by URL and seed."""
        urls, _, _ = read_url_list(self.urls)
        outcomes = read_outcomes(self.shards)
        url_of = {outcomes[u].file: u for u in urls if u in outcomes and outcomes[u].file}
        if not url_of:
            raise DataError(
                f"no image of data.urls={self.urls} is in {self.cache_dir}: call prepare_data() "
                "first to download them (the Trainer does)"
            )
        result, summary = self.scan_and_log(url_of, "internet cache")
        if len(result.paths) < 3:
            raise DataError(
                f"data.urls={self.urls} gave {len(result.paths)} usable image(s) ({summary}); a "
                "train/val/test split needs at least 3: add URLs of colour photographs"
            )
        parts = seeded_split(
            result.paths, self.val_fraction, self.test_fraction, self.seed, key=url_of.__getitem__
        )
        splits = dict(zip(SPLITS, parts, strict=True))
        sizes = ", ".join(f"{len(splits[s])} {s}" for s in SPLITS)
        log.info("internet: seeded split by URL (seed %d): %s", self.seed, sizes)
        return splits
