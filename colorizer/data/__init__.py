"""LightningDataModules that feed uint8 RGB batches ``[B, 3, H, W]`` to the colorizer models.

The names below are imported when first used, so that a process needing only the image
readers (``colorizer.prepare``'s shard writers) does not load Lightning.
"""

from __future__ import annotations

import importlib

_WHERE = {
    "CocoDataModule": "colorizer.data.coco",
    "CuratedDataModule": "colorizer.data.curated",
    "DataError": "colorizer.errors",
    "InternetDataModule": "colorizer.data.internet",
    "SkippedImage": "colorizer.data.images",
    "SyntheticDataModule": "colorizer.data.synthetic",
    "load_rgb": "colorizer.data.images",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'colorizer.data' has no attribute {name!r}")
