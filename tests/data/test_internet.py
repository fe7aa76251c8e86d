"""InternetDataModule against a real HTTP server on 127.0.0.1, downloading with img2dataset.

One module-scoped download (``first_run``) of a list that holds every kind of outcome is
shared by the tests that only read its cache; each of them works on a copy of that cache.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import urllib.error
from collections import Counter
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

import pandas as pd
import pytest
import torch
from PIL import Image

from colorizer.data import DataError
from colorizer.data.base import seeded_split
from colorizer.data.internet import InternetDataModule
from colorizer.data.url_cache import failure_reason, read_outcomes
from colorizer.data.url_guard import guarded_opener
from colorizer.run import train
from tests.helpers import ImageServer, Response, colour_photo, truncated_jpeg_bytes

TIMEOUT = 2.0  # seconds; the slow route answers only after SLOW
SLOW = 5.0
MAX_PIXELS = 500_000  # /huge.jpg (1000 x 800) is over it, /photos/big.jpg (400 x 300) is not
MAX_BYTES = 100_000  # /huge.jpg is 35 kB: under it, so its pixels are what refuses it
MAX_SECONDS = 2.0  # /drip.jpg sends a piece every 0.3 s (within TIMEOUT) for ~7 s; a redirect
# and its target (two requests) must fit in it on a busy 2-core machine
SETTINGS = dict(
    image_size=32, num_workers=0, batch_size=4, download_size=96, timeout=TIMEOUT, retries=1,
    threads=8, max_megapixels=MAX_PIXELS / 1e6, max_download_mb=MAX_BYTES / 1e6,
    max_download_seconds=MAX_SECONDS,
)  # fmt: skip


def encoded(image: Image.Image, kind: str = "JPEG", **options) -> bytes:
    buffer = BytesIO()
    image.save(buffer, kind, **options)
    return buffer.getvalue()


def sideways_jpeg() -> bytes:
    """A 120 x 80 JPEG whose EXIF says "rotate 90 CW to view": upright it is 80 x 120."""
    exif = Image.Exif()
    exif[0x0112] = 6
    return encoded(colour_photo(120, 80, seed=5), exif=exif)


ROUTES = {
    "/photos/p0.jpg": Response(body=encoded(colour_photo(96, 80, seed=1))),
    "/photos/p1.jpg": Response(body=encoded(colour_photo(80, 112, seed=2))),
    "/photos/p2.png": Response(
        body=encoded(colour_photo(72, 72, seed=3), "PNG"), content_type="image/png"
    ),
    "/photos/big.jpg": Response(body=encoded(colour_photo(400, 300, seed=4))),
    "/photos/sideways.jpg": Response(body=sideways_jpeg()),
    "/photos/gray.jpg": Response(body=encoded(colour_photo(90, 90, seed=6).convert("L"))),
    "/photos/new.jpg": Response(body=encoded(colour_photo(70, 90, seed=7))),  # listed later
    "/moved/here.jpg": Response(body=encoded(colour_photo(88, 88, seed=8))),
    "/redirect.jpg": Response(302, location="/moved/here.jpg"),
    "/error.jpg": Response(500, b"internal error", "text/plain"),
    "/slow.jpg": Response(body=encoded(colour_photo(64, 64, seed=9)), delay=SLOW),
    "/page.jpg": Response(body=b"<html><body>Not found</body></html>", content_type="text/html"),
    "/truncated.jpg": Response(body=truncated_jpeg_bytes()),
    "/huge.jpg": Response(body=encoded(colour_photo(1000, 800, seed=10))),
    "/oversized.jpg": Response(body=bytes(MAX_BYTES + 1)),  # refused by its Content-Length
    "/endless.jpg": Response(body=bytes(4 * MAX_BYTES), length=False),  # refused while read
    "/drip.jpg": Response(body=encoded(colour_photo(64, 64, seed=11)), drip=0.3),
    "/to-ftp.jpg": Response(302, location="ftp://127.0.0.1:{port}/photos/p1.jpg"),
}
DOWNLOADED = ["/photos/p0.jpg", "/photos/p1.jpg", "/photos/p2.png", "/photos/big.jpg",
              "/photos/sideways.jpg", "/photos/gray.jpg", "/redirect.jpg"]  # fmt: skip
FAILED = {
    "/missing.jpg": "http 404", "/error.jpg": "http 500", "/slow.jpg": "timeout",
    "/page.jpg": "corrupt or not an image", "/truncated.jpg": "corrupt or not an image",
    "/huge.jpg": "too large", "/oversized.jpg": "too large", "/endless.jpg": "too large",
    "/drip.jpg": "timeout", "/to-ftp.jpg": "redirect refused",
}  # fmt: skip
USABLE = [path for path in DOWNLOADED if path != "/photos/gray.jpg"]


def listed_urls(server: ImageServer) -> list[str]:
    """The test list: every outcome, a duplicate, and two URLs that must never be fetched."""
    return [
        *(server.url(path) for path in [*DOWNLOADED, *FAILED]),
        server.url("/photos/p0.jpg"),  # duplicate
        f"ftp://127.0.0.1:{server.port}/photos/p1.jpg",  # our server's port: it would notice
        "file:///etc/passwd",
    ]


def write_list(path: Path, urls: list[str]) -> Path:
    if path.suffix == ".txt":
        path.write_text("# image URLs\n\n" + "\n".join(urls) + "\n")
    else:
        table = pd.DataFrame({"caption": [f"photo {i}" for i in range(len(urls))], "url": urls})
        table.to_csv(path, index=False) if path.suffix == ".csv" else table.to_parquet(path)
    return path


@dataclass
class FirstRun:
    module: InternetDataModule
    urls_file: Path
    cache: Path
    log: str
    requests: Counter[str]
    connections: int
    process_state_kept: bool  # SIGINT handler and environment as before the download


@pytest.fixture(scope="module")
def server():
    with ImageServer(ROUTES) as running:
        yield running


@pytest.fixture(scope="module")
def first_run(server: ImageServer, tmp_path_factory: pytest.TempPathFactory) -> FirstRun:
    root = tmp_path_factory.mktemp("internet")
    urls_file = write_list(root / "photos.txt", listed_urls(server))
    module = InternetDataModule(str(urls_file), cache_dir=str(root / "cache"), **SETTINGS)
    logger = logging.getLogger("colorizer.data")
    records: list[str] = []
    handler = logging.Handler(logging.INFO)
    handler.emit = lambda record: records.append(record.getMessage())  # type: ignore[method-assign]
    level, interrupt_handler = logger.level, signal.getsignal(signal.SIGINT)
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        module.prepare_data()
        module.setup("fit")
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    process_state_kept = signal.getsignal(signal.SIGINT) is interrupt_handler and (
        "OPENCV_IO_MAX_IMAGE_PIXELS" not in os.environ
    )
    return FirstRun(
        module, urls_file, root / "cache", "\n".join(records), server.requests.copy(),
        server.connections, process_state_kept,
    )  # fmt: skip


def tried_urls(cache: Path) -> pd.DataFrame:
    """Every row img2dataset wrote: one per URL it was given (url, status, error_message...)."""
    return pd.concat(map(pd.read_parquet, sorted((cache / "shards").glob("*.parquet"))))


def cache_copy(first_run: FirstRun, tmp_path: Path) -> str:
    return str(shutil.copytree(first_run.cache, tmp_path / "cache"))


@pytest.mark.slow
def test_download_counts_every_outcome_by_reason(first_run: FirstRun, server: ImageServer) -> None:
    report = first_run.module.report
    assert report is not None
    assert (report["urls"], report["downloaded"], report["failed"]) == (19, 7, 10)
    assert report["failure_reasons"] == dict(Counter(FAILED.values()))
    assert report["rejection_reasons"] == {"not http/https": 2}
    assert (report["duplicates"], report["fetched_now"]) == (1, 17)
    assert report["failure_examples"]["corrupt or not an image"] == [
        server.url("/page.jpg"), server.url("/truncated.jpg")
    ]  # fmt: skip
    assert json.loads((first_run.cache / "download_report.json").read_text()) == report
    summary = (
        "internet: 19 URLs, 7 downloaded, 10 failed (3 too large, 2 corrupt or not an image, "
        "2 timeout, 1 http 404, 1 http 500, 1 redirect refused), 2 rejected (2 not http/https), "
        f"1 duplicate dropped; 17 fetched now, 0 from the cache {first_run.cache}"
    )
    assert report["summary"] == summary and summary in first_run.log
    # The pixel cap is checked against the header: the huge image was never decoded.
    rows = tried_urls(first_run.cache).set_index("url")
    assert "CV_IO_MAX_IMAGE_PIXELS" in rows.error_message[server.url("/huge.jpg")]
    # The download caps: by Content-Length, while reading a body without one, by time.
    assert f"more than {MAX_BYTES} bytes" in rows.error_message[server.url("/oversized.jpg")]
    assert f"more than {MAX_BYTES} bytes" in rows.error_message[server.url("/endless.jpg")]
    assert f"took more than {MAX_SECONDS:g} s" in rows.error_message[server.url("/drip.jpg")]
    # The scan after the download drops the grayscale photo, counted, and splits by URL.
    assert "internet cache: 7 found, 6 used, 1 skipped (1 grayscale)" in first_run.log


@pytest.mark.slow
def test_rejected_urls_are_never_fetched(first_run: FirstRun) -> None:
    # retries=1: a failed request is tried twice; everything else once; nothing else at all.
    expected = Counter({path: 1 for path in [*DOWNLOADED, *FAILED, "/moved/here.jpg"]})
    retried = ["/missing.jpg", "/error.jpg", "/slow.jpg", "/oversized.jpg", "/endless.jpg"]
    expected.update([*retried, "/drip.jpg", "/to-ftp.jpg"])
    assert first_run.requests == expected
    # Every connection carried one of those HTTP requests: neither the ftp:// URL nor the
    # redirect to ftp:// (both to this server's port) ever connected.
    assert first_run.connections == sum(expected.values())
    assert not any(url.startswith(("ftp:", "file:")) for url in tried_urls(first_run.cache).url)


@pytest.mark.slow
def test_download_leaves_the_process_as_it_was(first_run: FirstRun) -> None:
    # img2dataset installs a SIGINT handler that exits 0: Ctrl-C must still stop training.
    assert first_run.process_state_kept


@pytest.mark.slow
def test_cached_images_are_resized_upright_and_split_by_url(
    first_run: FirstRun, server: ImageServer
) -> None:
    outcomes = read_outcomes(first_run.cache / "shards")
    sizes = {path: Image.open(outcomes[server.url(path)].file).size for path in DOWNLOADED}
    assert sizes["/photos/big.jpg"] == (128, 96)  # shorter side shrunk to download_size
    assert sizes["/photos/p0.jpg"] == (96, 80)  # smaller ones are kept as they are
    assert sizes["/photos/sideways.jpg"] == (80, 120)  # EXIF orientation applied
    module = first_run.module
    assert module.splits is not None
    by_url = {file: url for url, (file, _) in outcomes.items() if file is not None}
    splits = [[by_url[file] for file in module.splits[s]] for s in ("train", "val", "test")]
    assert splits == list(seeded_split([server.url(p) for p in USABLE], 0.15, 0.15, seed=42))
    assert [len(split) for split in splits] == [4, 1, 1]


@pytest.mark.slow
def test_batches_are_uint8_rgb_squares(first_run: FirstRun) -> None:
    module = first_run.module
    train_batch = next(iter(module.train_dataloader()))
    assert train_batch.dtype == torch.uint8 and train_batch.shape == (4, 3, 32, 32)
    for loader in (module.val_dataloader(), module.test_dataloader()):
        assert next(iter(loader)).shape == (1, 3, 32, 32)


@pytest.mark.slow
def test_rerun_fetches_only_urls_not_tried_before(
    first_run: FirstRun, server: ImageServer, tmp_path: Path
) -> None:
    cache = cache_copy(first_run, tmp_path)
    before = server.requests.copy()
    again = InternetDataModule(str(first_run.urls_file), cache_dir=cache, **SETTINGS)
    again.prepare_data()
    assert server.requests == before  # not one request
    assert again.report is not None and again.report["fetched_now"] == 0
    assert again.report["failure_reasons"] == first_run.module.report["failure_reasons"]  # type: ignore[index]

    longer = write_list(
        tmp_path / "more.txt", [*listed_urls(server), server.url("/photos/new.jpg")]
    )
    extended = InternetDataModule(str(longer), cache_dir=cache, **SETTINGS)
    extended.prepare_data()
    assert server.requests - before == Counter({"/photos/new.jpg": 1})
    assert extended.report is not None and extended.report["downloaded"] == 8

    before = server.requests.copy()
    retry = InternetDataModule(str(longer), cache_dir=cache, retry_failed=True, **SETTINGS)
    retry.prepare_data()
    assert set(server.requests - before) == set(FAILED)  # only the failed ones, again
    assert retry.report is not None and retry.report["fetched_now"] == len(FAILED)
    before = server.requests.copy()
    retry.prepare_data()  # as Lightning calls it again before validate and test
    assert server.requests == before and retry.report["fetched_now"] == len(FAILED)


@pytest.mark.slow
@pytest.mark.parametrize("suffix", [".txt", ".csv", ".parquet"])
def test_every_list_format_reads_the_same_urls(
    first_run: FirstRun, server: ImageServer, tmp_path: Path, suffix: str
) -> None:
    urls_file = write_list(tmp_path / f"photos{suffix}", listed_urls(server))
    module = InternetDataModule(
        str(urls_file), cache_dir=cache_copy(first_run, tmp_path), **SETTINGS
    )
    module.prepare_data()
    assert module.report is not None and first_run.module.report is not None
    ignore = ("urls_file", "cache_dir", "summary", "fetched_now")
    assert {k: v for k, v in module.report.items() if k not in ignore} == {
        k: v for k, v in first_run.module.report.items() if k not in ignore
    }
    assert module.report["fetched_now"] == 0


def one_line_error(module: InternetDataModule) -> str:
    with pytest.raises(DataError) as raised:
        module.prepare_data()
    assert "\n" not in str(raised.value)
    return str(raised.value)


def test_unusable_lists_are_one_line_errors(tmp_path: Path) -> None:
    missing = one_line_error(InternetDataModule(str(tmp_path / "nope.txt")))
    assert missing == (
        f"data.urls={tmp_path / 'nope.txt'} does not exist: give a .txt/.csv/.parquet list of "
        "image URLs"
    )
    no_column = tmp_path / "links.csv"
    pd.DataFrame({"link": ["http://example.com/a.jpg"], "caption": ["a"]}).to_csv(
        no_column, index=False
    )
    message = one_line_error(InternetDataModule(str(no_column)))
    assert "has no 'url' column (it has: link, caption)" in message
    assert message.endswith("name the column of image URLs 'url'")
    pd.DataFrame({"link": ["http://example.com/a.jpg"]}).to_parquet(
        no_column.with_suffix(".parquet")
    )
    assert "no 'url' column" in one_line_error(
        InternetDataModule(str(no_column.with_suffix(".parquet")))
    )
    (tmp_path / "empty.txt").write_text("# nothing yet\n\n")
    assert "contains no URLs" in one_line_error(InternetDataModule(str(tmp_path / "empty.txt")))
    (tmp_path / "urls.json").write_text("[]")
    assert "give a .txt, .csv or .parquet" in one_line_error(
        InternetDataModule(str(tmp_path / "urls.json"))
    )
    only_rejected = write_list(tmp_path / "local.txt", ["file:///etc/passwd", "ftp://x/y.jpg"])
    module = InternetDataModule(str(only_rejected), cache_dir=str(tmp_path / "cache"))
    assert "none of its 2 URLs gave an image (2 not http/https)" in one_line_error(module)


@pytest.mark.slow
def test_nothing_downloaded_names_the_reasons_and_the_fix(
    first_run: FirstRun, server: ImageServer, tmp_path: Path
) -> None:
    failing = write_list(
        tmp_path / "bad.txt", [server.url("/missing.jpg"), server.url("/slow.jpg")]
    )
    before = server.requests.copy()
    module = InternetDataModule(str(failing), cache_dir=cache_copy(first_run, tmp_path), **SETTINGS)
    message = one_line_error(module)
    assert server.requests == before  # failures are remembered, not fetched again
    assert "none of its 2 URLs gave an image (1 http 404, 1 timeout)" in message
    assert message.endswith("re-run with data.retry_failed=true")


def test_guarded_opener_caps_reads_in_pieces_and_follows_http_redirects(
    server: ImageServer,
) -> None:
    opener = guarded_opener(max_bytes=2000, max_seconds=5)
    with opener.open(server.url("/redirect.jpg"), timeout=TIMEOUT) as response:
        assert response.read() == ROUTES["/moved/here.jpg"].body  # an http redirect: followed
    with pytest.raises(urllib.error.URLError, match="too large"):
        opener.open(server.url("/photos/big.jpg"), timeout=TIMEOUT)  # Content-Length: 8,470
    # No Content-Length: reading in pieces counts every piece, so the cap holds across calls.
    with opener.open(server.url("/endless.jpg"), timeout=TIMEOUT) as response:
        assert len(response.read(1200)) == 1200
        with pytest.raises(urllib.error.URLError, match="too large: more than 2000 bytes"):
            response.read(1200)


@pytest.mark.parametrize(
    ("message", "reason"),
    [  # error_message values img2dataset 1.47 wrote for the test server's routes
        ("HTTP Error 404: Not Found", "http 404"),
        ("HTTP Error 500: Internal Server Error", "http 500"),
        ("timed out", "timeout"),
        ("<urlopen error timed out>", "timeout"),
        ("Image decoding error", "corrupt or not an image"),
        ("OpenCV(4.14.0) loadsave.cpp:79: error: (-215:Assertion failed) pixels <= "
         "CV_IO_MAX_IMAGE_PIXELS in function 'validateInputImageSize'", "too large"),
        ("image area too large", "too large"),
        ("image too small", "too small"),
        ("<urlopen error too large: more than 100000 bytes>", "too large"),  # url_guard's
        ("timed out: the download took more than 1 s", "timeout"),  # url_guard's
        ("<urlopen error [Errno 111] Connection refused>", "connection error"),
        ("<urlopen error [Errno -2] Name or service not known>", "connection error"),
        ("HTTP Error 302: Found - Redirection to url 'file:///etc/passwd' is not allowed",
         "redirect refused"),
        ("Use of image disallowed by X-Robots-Tag directive", "disallowed by the site"),
        ("something new", "other"),
    ],
)  # fmt: skip
def test_failure_reasons_are_readable(message: str, reason: str) -> None:
    assert failure_reason(message) == reason


def test_default_cache_follows_the_list_path_and_size(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    a = InternetDataModule(str(tmp_path / "lists" / "photos.txt"))
    assert a.cache_dir.parent == tmp_path / "xdg" / "colorizer" / "internet"
    assert a.cache_dir.name.startswith("photos-") and a.cache_dir.name.endswith("-512px")
    assert InternetDataModule(str(tmp_path / "lists" / "photos.txt")).cache_dir == a.cache_dir
    assert InternetDataModule(str(tmp_path / "photos.txt")).cache_dir != a.cache_dir
    smaller = InternetDataModule(str(tmp_path / "lists" / "photos.txt"), download_size=256)
    assert smaller.cache_dir.name.endswith("-256px")
    assert not (tmp_path / "xdg").exists()  # the constructor does no I/O


def test_bad_download_settings_are_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"data.timeout=0 must be at least 0.001"):
        InternetDataModule("x.txt", timeout=0)
    with pytest.raises(DataError, match=r"data.download_size=64 must be at least 128"):
        InternetDataModule("x.txt", download_size=64, image_size=128)


@pytest.mark.slow
def test_training_on_a_url_list_end_to_end(first_run: FirstRun, make_cfg, tmp_path: Path) -> None:
    cfg = make_cfg(
        "model=alpha", "data=internet", f"data.urls={first_run.urls_file}",
        f"data.cache_dir={cache_copy(first_run, tmp_path)}",
        "data.image_size=32", "data.download_size=96", "data.num_workers=0", "data.batch_size=4",
        "trainer=debug", "logger=none", "trainer.accelerator=cpu",
    )  # fmt: skip
    summary = train(cfg)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics == json.loads(json.dumps(summary))
    assert metrics["data"] == "internet" and metrics["test/psnr"] > 0


@pytest.mark.slow
def test_cli_downloads_and_trains(server: ImageServer, main_of, tmp_path: Path) -> None:
    urls = [server.url(path) for path in [*USABLE, "/missing.jpg"]]
    urls_file = write_list(tmp_path / "photos.csv", urls)
    run, cache = tmp_path / "run", tmp_path / "cache"
    result = main_of(
        "colorizer.run", "model=alpha", "data=internet", f"data.urls={urls_file}",
        f"data.cache_dir={cache}", "data.image_size=32", "data.download_size=96",
        "data.num_workers=0", "data.retries=0", "trainer=debug", "logger=none",
        "trainer.accelerator=cpu", f"hydra.run.dir={run}",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    summary = (
        "internet: 7 URLs, 6 downloaded, 1 failed (1 http 404); "
        f"7 fetched now, 0 from the cache {cache}"
    )
    assert summary in result.stdout + result.stderr
    assert json.loads((cache / "download_report.json").read_text())["summary"] == summary
    assert json.loads((run / "metrics.json").read_text())["data"] == "internet"


def test_a_checkpoint_from_before_max_megapixels_reads_the_same_images(tmp_path: Path) -> None:
    """``data.max_pixels`` became ``data.max_megapixels``: a run recorded with the old key (and
    without the new) still counts as the same images, so evaluation reuses its split."""
    urls = tmp_path / "urls.txt"
    urls.write_text("http://127.0.0.1:9/a.jpg\n")
    module = InternetDataModule(str(urls), cache_dir=str(tmp_path / "cache"), image_size=32)
    trained = {k: v for k, v in module.hparams.items() if k != "max_megapixels"}
    assert module.split_differences({**trained, "max_pixels": 89_478_485}) == {}
