"""LightningDataModules that feed uint8 RGB batches ``[B, 3, H, W]`` to the colorizer models."""

from datamodules.base import DataError
from datamodules.curated import CuratedDataModule
from datamodules.images import SkippedImage, load_rgb
from datamodules.synthetic import SyntheticDataModule

__all__ = ["CuratedDataModule", "DataError", "SkippedImage", "SyntheticDataModule", "load_rgb"]
