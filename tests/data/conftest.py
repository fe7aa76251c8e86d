"""Tiny real image files for the datamodule tests (written into tmp_path, never mocked)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

import pytest
from PIL import Image

from tests.helpers import colour_photo, truncated_jpeg_bytes


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
