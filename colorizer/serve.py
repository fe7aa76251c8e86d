"""A local page for colour hints: ``python -m colorizer.serve ckpt_path=X`` (README, Colour hints).

Load a photo, click a point and pick its colour (or drag a stroke), and the page shows the
photo recoloured with those hints within a fraction of a second; undo, then download the
full-resolution result and the hints file (the format of ``colorize hints=FILE``).

A standard-library HTTP server and one HTML file (``serve_page.html``), no web framework:

- ``GET /``: the page; ``GET /info``: the model, working size and upload caps (JSON).
- ``POST /photo``: the photo's bytes (its name in ``X-Filename``), refused by Content-Length
  above ``max_upload_mb`` before it is read, decoded by the training loader
  (:func:`colorizer.data.images.load_rgb`), refused above ``max_megapixels``; JSON back.
- ``POST /preview``: ``{"photo": ID, "points": [hint, ...]}``, each hint as in a hints file, in
  the photo's own pixels; a PNG of the photo recoloured at preview size (shorter side
  ``PREVIEW_SIDE`` or the working size, whichever is larger). Its hints become the current ones.
- ``GET /result.png`` and ``GET /hints.json``: the full-resolution result and the hints file
  of the current hints, as downloads.

One photo at a time, kept in memory with its current hints: a second page that loads a photo
replaces it (the first page is then told so). Errors come back as one line of text with a
4xx status, and the page shows that line.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import threading
import webbrowser
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path, PurePosixPath, PureWindowsPath
from urllib.parse import parse_qs, quote, unquote, urlsplit

import torch
from omegaconf import DictConfig

from colorizer.cli import run_app
from colorizer.error_lines import one_line
from colorizer.errors import ConfigError, require_int
from colorizer.hint_session import MB, HintSession, RequestError
from colorizer.inference import (
    ChromaNetwork,
    open_network,
    resolve_device,
)
from colorizer.models.spec import check_size_option

log = logging.getLogger(__name__)

PAGE = Path(__file__).with_name("serve_page.html")
TEXT = "text/plain; charset=utf-8"  # what errors are: one line
# Above the cap, this much of a body is still read and dropped, so the client gets the one-line
# answer instead of a reset connection; beyond it the connection is closed.
DRAIN_LIMIT = 256 * MB


def _file_name(header: str | None) -> str:
    """The upload's file name from ``X-Filename`` (percent-encoded), without folders."""
    name = unquote(header or "").strip()
    name = PureWindowsPath(PurePosixPath(name).name).name
    return name or "photo"


def _attachment(name: str) -> str:
    """A Content-Disposition naming a download ``name``: ASCII for old clients, UTF-8 (RFC 6266)
    for the others."""
    plain = "".join(c if c.isascii() and c.isprintable() and c not in '"\\' else "_" for c in name)
    return f"attachment; filename=\"{plain}\"; filename*=UTF-8''{quote(name)}"


def make_server(session: HintSession, host: str, port: int) -> ThreadingHTTPServer:
    """A server of ``session``'s page on ``host:port`` (0: any free port), not yet serving."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the http.server API
            url = urlsplit(self.path)
            photo = parse_qs(url.query).get("photo", [None])[0]
            photo_id = int(photo) if photo and photo.isdigit() else photo
            self._answer(lambda: self._get(url.path, photo_id))

        def do_POST(self) -> None:  # noqa: N802
            self._answer(lambda: self._post(urlsplit(self.path).path))

        def _get(self, path: str, photo_id: object) -> tuple[bytes, str, dict]:
            if path == "/":
                return PAGE.read_bytes(), "text/html; charset=utf-8", {}
            if path == "/info":
                return json.dumps(session.info()).encode(), "application/json", {}
            if path in ("/result.png", "/hints.json"):
                if path == "/result.png":
                    name, body = session.result(photo_id)
                    kind = "image/png"
                else:
                    name, body = session.hints_file(photo_id)
                    kind = "application/json"
                return body, kind, {"Content-Disposition": _attachment(name)}
            raise RequestError(HTTPStatus.NOT_FOUND, f"no page at {path}")

        def _post(self, path: str) -> tuple[bytes, str, dict]:
            if path not in ("/photo", "/preview"):
                raise RequestError(HTTPStatus.NOT_FOUND, f"no page at {path}")
            body = self._read_body(session.max_upload_bytes if path == "/photo" else 8 * MB)
            if path == "/photo":
                answer = session.load(_file_name(self.headers.get("X-Filename")), body)
                return json.dumps(answer).encode(), "application/json", {}
            try:
                request = json.loads(body)
            except (UnicodeDecodeError, json.JSONDecodeError) as err:
                raise RequestError(HTTPStatus.BAD_REQUEST, f"not JSON ({err})") from err
            png, ms = session.preview(request)
            return png, "image/png", {"X-Preview-Ms": f"{ms:.1f}"}

        def _read_body(self, cap: int) -> bytes:
            try:
                length = int(self.headers.get("Content-Length", ""))
            except ValueError:
                raise RequestError(HTTPStatus.LENGTH_REQUIRED, "send a Content-Length") from None
            if length < 0:
                raise RequestError(HTTPStatus.BAD_REQUEST, f"Content-Length {length} is negative")
            if length > cap:
                self._drop_body(length)
                raise RequestError(
                    HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                    f"upload of {length / MB:.1f} MB is over the {cap / MB:g} MB this server "
                    "takes (max_upload_mb)",
                )
            return self.rfile.read(length)

        def _drop_body(self, length: int) -> None:
            if length > DRAIN_LIMIT:
                self.close_connection = True
                return
            while length > 0:
                chunk = self.rfile.read(min(length, MB))
                if not chunk:
                    break
                length -= len(chunk)

        def _answer(self, respond: Callable[[], tuple[bytes, str, dict]]) -> None:
            try:
                body, kind, headers = respond()
                status = HTTPStatus.OK
            except RequestError as err:
                status, body, kind, headers = err.status, err.message.encode(), TEXT, {}
            except Exception as err:  # e.g. out of memory on a huge photo: the page says so
                log.debug("%s %s failed", self.command, self.path, exc_info=True)
                status, kind, headers = HTTPStatus.INTERNAL_SERVER_ERROR, TEXT, {}
                body = f"{type(err).__name__}: {one_line(err)[:300]}".encode()
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            for key, value in headers.items():
                self.send_header(key, value)
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            log.debug(format, *args)  # the run's log file, not the console

    class Server(ThreadingHTTPServer):
        daemon_threads = True  # Ctrl+C does not wait for a browser's idle connection

        def handle_error(self, request: object, client_address: tuple) -> None:
            # A browser that went away mid-answer: the run's log file, not a console traceback.
            log.debug("connection from %s failed", client_address, exc_info=True)

    try:
        return Server((host, port), Handler)
    except OSError as err:
        if err.errno == errno.EADDRINUSE:
            message = f"port={port} is in use: pick another, or port=0 for any free one"
            raise ConfigError(message) from err
        raise ConfigError(f"cannot serve on host={host} ({err.strerror or err})") from err


def serve(cfg: DictConfig, network: ChromaNetwork | None = None) -> None:
    """Serve the page until Ctrl+C. ``network`` replaces the one ``cfg.ckpt_path`` names."""
    _check(cfg)
    if network is None:
        device = resolve_device(str(cfg.device))
        network = open_network(str(cfg.ckpt_path), str(cfg.backend), device)
    size = network.spec.working_size(cfg.size)
    session = HintSession(network, size, cfg.max_upload_mb, cfg.max_megapixels)
    with make_server(session, str(cfg.host), cfg.port) as server:
        host, port = server.server_address[:2]
        if network.device.type == "cpu":
            # A preview is small tensors: one thread took 70-100 ms for a 768 x 512 one on two
            # busy cores, where two threads took 600-900 ms (a team of OpenMP threads waits for
            # its slowest, and another process holds a core).
            torch.set_num_threads(1)
        url = f"http://{host}:{port}"
        if str(cfg.host) not in ("127.0.0.1", "localhost"):
            log.warning("host=%s: anyone who can reach this machine can use the page", cfg.host)
        print(f"Serving model={network.name} at {url} (Ctrl+C to stop)", flush=True)
        if cfg.open_browser:
            threading.Timer(0.5, webbrowser.open, [url]).start()
        server.serve_forever()


def _check(cfg: DictConfig) -> None:
    """Refuse bad option values with a message naming the key."""
    check_size_option("size", cfg.size)
    require_int("port", cfg.port, least=0)
    if cfg.port > 65535:
        raise ConfigError(f"port={cfg.port} must be at most 65535 (0: any free port)")
    for key in ("max_upload_mb", "max_megapixels"):
        value = cfg[key]
        if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
            raise ConfigError(f"{key}={value!r} must be a positive number")


def _cli(cfg: DictConfig) -> None:
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl+C stops it: exit 0, no traceback
        serve(cfg)


def main() -> None:
    run_app(_cli, config_name="serve")


if __name__ == "__main__":
    main()
