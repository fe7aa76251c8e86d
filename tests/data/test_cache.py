"""The resized cache: made once at the size crops need, reused, re-made when a photo changes."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from colorizer.data.cache import cache_folder, cache_side, copy_size, resized_copies
from colorizer.data.curated import CuratedDataModule
from colorizer.data.images import load_rgb


def test_cache_side_is_what_the_smallest_crop_needs() -> None:
    assert cache_side(128, 0.35) == 217  # a crop of 35 % of the area: 0.59 of the side
    assert cache_side(256, 1.0) == 256


def test_copies_hold_the_same_area_whatever_their_aspect_ratio() -> None:
    assert copy_size(1000, 1000, side=433, min_side=256) == (433, 433)
    height, width = copy_size(576, 1024, side=433, min_side=256)  # 16:9: fewer rows
    assert (height, width) == (325, 577) and abs(height * width - 433**2) < 433
    assert copy_size(1024, 576, side=433, min_side=256) == (577, 325)  # portrait
    # A panorama keeps its shorter side at the crop size; small images are never enlarged.
    assert copy_size(1000, 4000, side=433, min_side=256) == (256, 1024)
    assert copy_size(300, 400, side=433, min_side=256) == (300, 400)


def test_copies_are_made_once_and_remade_when_the_photo_changes(
    tmp_path: Path, write_photos, truncated_jpeg: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    big, small = write_photos(tmp_path / "photos", ["big.png", "small.png"], size=(600, 400))
    Image.fromarray(np.asarray(Image.open(small))[:100, :150]).save(small)  # 150 x 100
    broken = tmp_path / "photos" / "broken.jpg"
    broken.write_bytes(truncated_jpeg)
    with caplog.at_level(logging.INFO, logger="colorizer.data"):
        copies = resized_copies([big, small, broken], tmp_path / "cache", side=200, min_side=64)
    assert "3 images at 200² px (2 made in" in caplog.text and "0 reused" in caplog.text
    assert copies[2] == broken  # unreadable: left to the dataset, which skips it
    folder = cache_folder(tmp_path / "cache", 200, 64)
    assert all(copy.parent == folder for copy in copies[:2])
    assert Image.open(copies[0]).size == (245, 163)  # 200² pixels at 3:2
    assert Image.open(copies[1]).size == (150, 100)  # never enlarged
    original, copy = load_rgb(small).float(), load_rgb(copies[1]).float()
    assert (original - copy).abs().mean() < 2.0  # 4:4:4 JPEG at quality 95: nearly lossless

    caplog.clear()
    with caplog.at_level(logging.INFO, logger="colorizer.data"):
        assert resized_copies([big, small], tmp_path / "cache", 200, 64) == copies[:2]
    assert "(0 made in" in caplog.text and "2 reused" in caplog.text
    later = os.stat(big).st_mtime_ns + 10**9
    os.utime(big, ns=(later, later))  # edited: a new copy, under a new name
    assert resized_copies([big], tmp_path / "cache", 200, 64)[0] != copies[0]


def test_datamodule_trains_from_the_cache(tmp_path: Path, write_photos) -> None:
    names = [f"p{i}.jpg" for i in range(12)]
    write_photos(tmp_path / "photos", names, size=(320, 240))
    cache = tmp_path / "cache"
    module = CuratedDataModule(
        str(tmp_path / "photos"), image_size=64, batch_size=4, num_workers=0,
        resized_cache=str(cache),
    )  # fmt: skip
    module.setup("fit")
    folder = cache_folder(cache, cache_side(64, 0.35), 64)
    assert module.train_set.paths and all(p.parent == folder for p in module.train_set.paths)
    assert all(p.parent != folder for p in module.val_set.paths)  # evaluation reads originals
    batch = next(iter(module.train_dataloader()))
    assert batch.shape == (4, 3, 64, 64) and batch.dtype == torch.uint8
    # The fast decoder reads the copies as the careful one does.
    fast = module.train_set._decode(module.train_set.paths[0])
    careful = load_rgb(module.train_set.paths[0])
    assert fast.shape == careful.shape
    assert (fast.float() - careful.float()).abs().mean() < 1.0
