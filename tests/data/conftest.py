"""Tiny real image files for the datamodule tests (written into tmp_path, never mocked)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def colour_photo(width: int, height: int, seed: int = 0) -> Image.Image:
    """A smooth, clearly colourful RGB image (smooth so JPEG keeps it close to the original)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width] / max(width, height)
    freq = rng.uniform(0.5, 2.0, size=(3, 2))
    phase = rng.uniform(0, 2 * np.pi, size=3)
    channels = [
        0.5 + 0.45 * np.sin(2 * np.pi * (fx * x + fy * y) + p)
        for (fx, fy), p in zip(freq, phase, strict=True)
    ]
    return Image.fromarray((np.stack(channels, axis=-1) * 255).astype(np.uint8))


def truncated_jpeg_bytes(size: int = 128) -> bytes:
    """The first half of a valid JPEG: what an interrupted download leaves behind."""
    buffer = BytesIO()
    colour_photo(size, size, seed=99).save(buffer, "JPEG", quality=90)
    data = buffer.getvalue()
    return data[: len(data) // 2]


@pytest.fixture
def make_photo() -> Callable[..., Image.Image]:
    return colour_photo


@pytest.fixture
def truncated_jpeg() -> bytes:
    return truncated_jpeg_bytes()


@pytest.fixture
def write_photos() -> Callable[..., list[Path]]:
    """``write_photos(folder, names, size=(48, 40))``: one distinct colour photo per name."""

    def write(folder: Path, names: Iterable[str], size: tuple[int, int] = (48, 40)) -> list[Path]:
        paths = []
        for name in names:
            path = folder / name
            path.parent.mkdir(parents=True, exist_ok=True)
            # The seed comes from the name, so the same name always holds the same picture.
            seed = sum(ord(c) * (i + 1) for i, c in enumerate(name))
            colour_photo(*size, seed=seed).save(path)
            paths.append(path)
        return paths

    return write
