"""Training augmentation that runs batched on the model's device (README, Speed).

Workers only decode and crop; flips and small affine warps (rotation, zoom, shear) happen
here, on whole uint8 batches ``[B, 3, H, W]`` after the transfer to the device, where they are
nearly free on a GPU. Output is uint8 again, so the batch contract never changes.
"""

from __future__ import annotations

import kornia.augmentation as K
import torch
from torch import nn


class DeviceAugmentation(nn.Module):
    """Random horizontal flips and small affine warps of uint8 RGB batches.

    Args:
        hflip: flip half of the images left-right.
        degrees: rotations drawn from [-degrees, degrees].
        zoom: scale factors drawn from [1 - zoom, 1 + zoom].
        shear: shear angles in degrees drawn from [-shear, shear].

    Warps fill the uncovered border by reflection: black corners would teach the model that
    image corners have no colour.
    """

    def __init__(
        self, hflip: bool = True, degrees: float = 0.0, zoom: float = 0.0, shear: float = 0.0
    ) -> None:
        super().__init__()
        for name, value, high in (
            ("degrees", degrees, 180),
            ("zoom", zoom, 1),
            ("shear", shear, 90),
        ):
            if not 0 <= value < high:
                raise ValueError(f"data.augment.{name}={value} must be in [0, {high})")
        ops: list[nn.Module] = []
        if hflip:
            ops.append(K.RandomHorizontalFlip(p=0.5))
        if degrees or zoom or shear:
            ops.append(
                K.RandomAffine(
                    degrees=degrees,
                    scale=(1 - zoom, 1 + zoom) if zoom else None,
                    shear=shear or None,
                    padding_mode="reflection",
                    p=1.0,
                )
            )
        self.ops = nn.Sequential(*ops)

    @property
    def active(self) -> bool:
        return len(self.ops) > 0

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 ``[B, 3, H, W]`` -> augmented uint8 ``[B, 3, H, W]``."""
        if not self.active:
            return images
        warped = self.ops(images.float() / 255.0)
        return (warped * 255.0).round_().clamp_(0, 255).to(torch.uint8)
