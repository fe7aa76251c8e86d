"""The published tutorial's data path, kept only as the benchmark's reference (README, Speed).

Per sample, in the workers: PIL decode of the original, bicubic resize to S x S, a random
horizontal flip, then scikit-image ``rgb2lab`` and the L/ab normalisation, so every worker
spends most of its time on full-size decoding and float Lab maths. ``colorizer.bench``
compares it with this project's path (decode and crop uint8 in workers, Lab on the device).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from skimage.color import rgb2lab
from torch.utils.data import Dataset

from colorizer.color import AB_SCALE, L_SCALE


class PerSampleLabDataset(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """Items: (L ``[1, S, S]`` in [-1, 1], ab ``[2, S, S]`` in [-1, 1]) float32, per sample."""

    def __init__(self, paths: Sequence[Path], image_size: int):
        self.paths = list(paths)
        self.image_size = image_size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = Image.open(self.paths[index]).convert("RGB")
        size = (self.image_size, self.image_size)
        image = image.resize(size, Image.Resampling.BICUBIC)
        if random.random() < 0.5:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        lab = torch.from_numpy(rgb2lab(np.asarray(image)).astype(np.float32)).permute(2, 0, 1)
        return lab[:1] / L_SCALE - 1.0, lab[1:] / AB_SCALE
