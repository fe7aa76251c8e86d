"""LightningDataModules that feed uint8 RGB batches ``[B, 3, H, W]`` to the colorizer models."""

from colorizer.data.base import DataError
from colorizer.data.coco import CocoDataModule
from colorizer.data.curated import CuratedDataModule
from colorizer.data.images import SkippedImage, load_rgb
from colorizer.data.internet import InternetDataModule
from colorizer.data.synthetic import SyntheticDataModule

__all__ = [
    "CocoDataModule",
    "CuratedDataModule",
    "DataError",
    "InternetDataModule",
    "SkippedImage",
    "SyntheticDataModule",
    "load_rgb",
]
