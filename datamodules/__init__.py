"""LightningDataModules that feed uint8 RGB batches ``[B, 3, H, W]`` to the colorizer models."""

from datamodules.base import DataError
from datamodules.coco import CocoDataModule
from datamodules.curated import CuratedDataModule
from datamodules.images import SkippedImage, load_rgb
from datamodules.internet import InternetDataModule
from datamodules.synthetic import SyntheticDataModule

__all__ = [
    "CocoDataModule",
    "CuratedDataModule",
    "DataError",
    "InternetDataModule",
    "SkippedImage",
    "SyntheticDataModule",
    "load_rgb",
]
