"""Caps on every download img2dataset makes for us: bytes, time, and where redirects lead.

URLs are untrusted input. img2dataset fetches each one with ``urllib.request.urlopen`` in
worker processes it spawns, with a timeout per socket operation only: a server could send an
endless body, drip bytes just fast enough never to time out, or redirect to ``ftp://`` (which
urllib follows). img2dataset has no hook for this, so :func:`guarded_downloads` hands it a
downloader of ours: img2dataset's own, which first installs :func:`guarded_opener` as urllib's
opener in the worker process it runs in. The spawned workers receive it pickled by reference
to this module, so they apply the same caps.

A refused download fails like any other, with a message img2dataset records and
:func:`colorizer.data.url_cache.failure_reason` reads: "too large", "timeout", "redirect refused".
"""

from __future__ import annotations

import functools
import importlib
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from http.client import HTTPResponse
from typing import Any
from urllib.parse import urlsplit

from img2dataset.downloader import Downloader

# The module, not the function ``img2dataset.main`` that the package exports under its name.
img2dataset_main = importlib.import_module("img2dataset.main")

_CHUNK = 1 << 16


class _HttpOnlyRedirects(urllib.request.HTTPRedirectHandler):
    """Follows redirects to http(s) only; urllib itself would also follow one to ftp://."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: ANN001, ANN201
        if urlsplit(newurl).scheme.lower() not in ("http", "https"):
            raise urllib.error.HTTPError(
                newurl, code, f"{msg} - Redirection to url '{newurl}' is not allowed", headers, fp
            )
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None and hasattr(req, "deadline"):
            new.deadline = req.deadline  # one time limit for the whole chain of redirects
        return new


class _Caps(urllib.request.BaseHandler):
    """Refuses a response over ``max_bytes`` (by its Content-Length, or while it is read) and
    one whose body is not in by ``max_seconds`` after the request started."""

    handler_order = 1001  # after HTTPErrorProcessor: only the final response of a redirect chain

    def __init__(self, max_bytes: int, max_seconds: float) -> None:
        self.max_bytes, self.max_seconds = max_bytes, max_seconds

    def http_request(self, request: urllib.request.Request) -> urllib.request.Request:
        if not hasattr(request, "deadline"):
            request.deadline = time.monotonic() + self.max_seconds  # type: ignore[attr-defined]
        return request

    https_request = http_request

    def http_response(self, request: urllib.request.Request, response: Any) -> Any:
        if getattr(response, "capped", False):
            return response  # a redirect's target, already capped on its own way up
        length = response.headers.get("Content-Length")
        if length and length.isdigit() and int(length) > self.max_bytes:
            response.close()
            raise urllib.error.URLError(self._too_large())
        self._check_time(request.deadline)
        response.read = functools.partial(self._read, response, request.deadline)
        response.capped, response.bytes_read = True, 0
        return response

    https_response = http_response

    def _read(self, response: HTTPResponse, deadline: float, amount: int | None = -1) -> bytes:
        """The body (up to ``amount`` bytes), in chunks, checking the size read so far (over
        every call) and the time after each."""
        wanted = self.max_bytes + 1 if amount is None or amount < 0 else amount
        chunks, size = [], 0
        while size < wanted:
            # read1: returns what has arrived instead of waiting for a whole chunk, so a server
            # that drips bytes is caught at the deadline rather than when the chunk fills.
            chunk = response.read1(min(_CHUNK, wanted - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
            response.bytes_read += len(chunk)
            if response.bytes_read > self.max_bytes:
                raise urllib.error.URLError(self._too_large())
            self._check_time(deadline)
        return b"".join(chunks)

    def _check_time(self, deadline: float) -> None:
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out: the download took more than {self.max_seconds:g} s")

    def _too_large(self) -> str:
        return f"too large: more than {self.max_bytes} bytes"


def guarded_opener(max_bytes: int, max_seconds: float) -> urllib.request.OpenerDirector:
    """urllib's default opener, with http(s)-only redirects and the caps of :class:`_Caps`."""
    return urllib.request.build_opener(_HttpOnlyRedirects, _Caps(max_bytes, max_seconds))


class GuardedDownloader(Downloader):
    """img2dataset's downloader, with :func:`guarded_opener` installed in its process."""

    def __init__(self, *args: Any, max_bytes: int, max_seconds: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.max_bytes, self.max_seconds = max_bytes, max_seconds

    def __call__(self, row: Any) -> Any:
        # This process exists only to download for img2dataset: a global opener is safe here.
        urllib.request.install_opener(guarded_opener(self.max_bytes, self.max_seconds))
        return super().__call__(row)


@contextmanager
def guarded_downloads(max_bytes: int, max_seconds: float) -> Iterator[None]:
    """Within the block, ``img2dataset.download`` downloads through :class:`GuardedDownloader`."""
    if getattr(img2dataset_main, "Downloader", None) is not Downloader:
        raise RuntimeError(
            "this img2dataset version builds its downloader differently: the download caps "
            "cannot be applied; install the version pyproject.toml names"
        )
    img2dataset_main.Downloader = functools.partial(
        GuardedDownloader, max_bytes=max_bytes, max_seconds=max_seconds
    )
    try:
        yield
    finally:
        img2dataset_main.Downloader = Downloader
