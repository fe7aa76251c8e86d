"""alpha: the tiny fully convolutional colorizer of the seed project (32,202 parameters)."""

from __future__ import annotations

import torch

from colorizer.models.base import ColorizationModule
from colorizer.models.blocks import conv_stack

# SPEC §4: three stride-2 convs down to 1/8, three nearest upsamplings back, tanh ab out.
ALPHA_LAYERS = ["8s2", "8", "16", "16s2", "32", "32s2", "up", "32", "up", "16", "up", "2tanh"]


class AlphaColorizer(ColorizationModule):
    """Tiny CNN, any input size divisible by 8 (others are padded by ``predict_ab``).

    The seed recipe trains it with RMSprop (lr 1e-3), batch 1, MSE on very few images.
    """

    size_multiple = 8

    def __init__(self, lr: float = 1e-3, optimizer: str = "rmsprop", weight_decay: float = 0.0):
        super().__init__(lr=lr, optimizer=optimizer, weight_decay=weight_decay)
        self.net = conv_stack(1, ALPHA_LAYERS)

    def forward(self, l_norm: torch.Tensor) -> torch.Tensor:
        return self.net(l_norm)
