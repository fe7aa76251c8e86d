"""The state behind the hints page (``colorizer.serve``): the network, the one photo being
hinted and its current hints; what each request of the page asks of them."""

from __future__ import annotations

import json
import tempfile
import threading
import time
from dataclasses import dataclass, field
from http import HTTPStatus
from io import BytesIO
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image

from colorizer.data.images import SkippedImage, load_rgb, pixel_limit
from colorizer.errors import ConfigError
from colorizer.hints import parse_hint
from colorizer.inference import (
    ChromaNetwork,
    colorize_full_resolution,
    full_lightness,
    merge_full_resolution,
    working_chroma,
)

# The preview's shorter side: sharp enough on a screen, while the network still sees the
# working size (only L and the merge are at this size, a few milliseconds).
PREVIEW_SIDE = 512
MAX_POINTS = 2000  # more than any page sends; bounds the work of one request
MB = 1 << 20


class RequestError(Exception):
    """A request the page or a client got wrong: ``status`` and a one-line ``message``."""

    def __init__(self, status: HTTPStatus, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


@dataclass
class Photo:
    """The photo being hinted: uint8 ``[3, H, W]``, its preview's normalised L
    ``[1, 1, h, w]`` and its current hints (hints-file entries)."""

    id: int
    name: str
    image: torch.Tensor
    preview_l: torch.Tensor
    entries: list[dict] = field(default_factory=list)


class HintSession:
    """The network and the one photo it serves; a lock makes requests take turns."""

    def __init__(
        self, network: ChromaNetwork, size: int, max_upload_mb: float, max_megapixels: float
    ) -> None:
        if not network.spec.hints:
            raise ConfigError(
                f"model={network.name} takes no hints: train it with model.hints=true"
            )
        self.network, self.size = network, size
        self.max_upload_bytes = int(max_upload_mb * MB)
        self.max_megapixels = max_megapixels
        self.photo: Photo | None = None
        self.lock = threading.Lock()
        self._decoding = threading.Lock()
        self._next_id = 1

    def info(self) -> dict:
        return {
            "model": self.network.name,
            "size": self.size,
            "max_upload_mb": self.max_upload_bytes / MB,
            "max_megapixels": self.max_megapixels,
        }

    def load(self, name: str, data: bytes) -> dict:
        """Decode an upload as training does and make it the photo; its id and size back."""
        with tempfile.TemporaryDirectory(prefix="colorizer-serve-") as folder:
            path = Path(folder) / "upload"
            path.write_bytes(data)
            self._check_pixels(name, path)
            # Pillow's limit is the process's: uploads decode one at a time under this one.
            with self._decoding, pixel_limit(self.max_megapixels):
                try:
                    image = load_rgb(path)
                except SkippedImage as err:
                    raise RequestError(HTTPStatus.BAD_REQUEST, f"{name}: {err.described}") from err
        height, width = image.shape[-2:]
        scale = min(1.0, max(PREVIEW_SIDE, self.size) / min(height, width))
        shape = (max(1, round(height * scale)), max(1, round(width * scale)))
        preview = image if scale == 1 else _resize_uint8(image, shape)
        (preview_l,) = full_lightness([preview], self.network.device)
        with self.lock:
            self.photo = Photo(self._next_id, name, image, preview_l)
            self._next_id += 1
            return {"id": self.photo.id, "name": name, "width": width, "height": height}

    def _check_pixels(self, name: str, path: Path) -> None:
        """Refuse a photo above ``max_megapixels`` from its header, before decoding it."""
        try:
            with Image.open(path) as header:
                width, height = header.size
        except Exception:  # load_rgb names what is wrong with the file
            return
        megapixels = width * height / 1e6
        if megapixels > self.max_megapixels:
            raise RequestError(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                f"{name} is {width} x {height} ({megapixels:.1f} megapixels), over the "
                f"{self.max_megapixels:g} megapixels this server takes (max_megapixels)",
            )

    def preview(self, request: object) -> tuple[bytes, float]:
        """The preview PNG with the request's hints, which become the current ones, and the
        milliseconds it took."""
        if not isinstance(request, dict) or not isinstance(request.get("points"), list):
            raise RequestError(HTTPStatus.BAD_REQUEST, 'send {"photo": ID, "points": [...]}')
        with self.lock:
            photo = self._current(request.get("photo"))
            entries, points = _parse_points(request["points"], photo.image)
            start = time.perf_counter()
            (ab,) = working_chroma(self.network, [photo.preview_l], self.size, [points])
            rgb = merge_full_resolution(photo.preview_l, ab)[0]
            png = _png(rgb)
            photo.entries = entries
        return png, (time.perf_counter() - start) * 1000

    def result(self, photo_id: object) -> tuple[str, bytes]:
        """The full-resolution result with the current hints: its file name and PNG."""
        with self.lock:
            photo = self._current(photo_id)
            _, points = _parse_points(photo.entries, photo.image)
            (rgb,) = colorize_full_resolution(self.network, [photo.image], self.size, [points])
        return f"{Path(photo.name).stem}_colorized.png", _png(rgb)

    def hints_file(self, photo_id: object) -> tuple[str, bytes]:
        """The current hints as a hints file, keyed by the photo's name: its file name and
        text."""
        with self.lock:
            photo = self._current(photo_id)
            text = json.dumps({photo.name: photo.entries}, indent=2, ensure_ascii=False) + "\n"
        return f"{Path(photo.name).stem}_hints.json", text.encode()

    def _current(self, photo_id: object) -> Photo:
        if self.photo is None:
            raise RequestError(HTTPStatus.CONFLICT, "no photo loaded: load one first")
        if photo_id is not None and photo_id != self.photo.id:
            raise RequestError(
                HTTPStatus.CONFLICT,
                f"another page loaded {self.photo.name} since: load your photo again",
            )
        return self.photo


def _parse_points(raw: list, image: torch.Tensor) -> tuple[list[dict], list]:
    """Hints-file entries -> (the entries as the hints file keeps them, their ``HintPoint``s);
    RequestError naming the point and what is wrong."""
    if len(raw) > MAX_POINTS:
        raise RequestError(HTTPStatus.BAD_REQUEST, f"{len(raw)} points: at most {MAX_POINTS}")
    height, width = image.shape[-2:]
    entries, points = [], []
    for i, entry in enumerate(raw):
        try:
            hint = parse_hint(entry)
            points.append(hint.in_photo(width, height))
        except ValueError as err:  # HintError included
            raise RequestError(HTTPStatus.BAD_REQUEST, f"point {i}: {err}") from err
        keep = ("x", "y", "color", "ab") + (("radius",) if hint.radius else ())
        entries.append({key: entry[key] for key in keep if key in entry})
    return entries, points


def _resize_uint8(image: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """uint8 ``[3, H, W]`` -> uint8 ``[3, h, w]``, antialiased."""
    small = F.interpolate(image[None].float(), size=shape, mode="bilinear", antialias=True)
    return small[0].round_().clamp_(0, 255).to(torch.uint8)


def _png(rgb: torch.Tensor) -> bytes:
    buffer = BytesIO()
    # Level 1: a fraction of the default's time, for files a few tens of percent larger.
    Image.fromarray(rgb.permute(1, 2, 0).numpy()).save(buffer, "PNG", compress_level=1)
    return buffer.getvalue()
