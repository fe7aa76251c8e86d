"""Building blocks shared by the architectures.

The plain CNNs (alpha, beta) are written as layer specs that read like the README's Models table:
``"16"`` is a 3x3 same-padded conv to 16 channels + ReLU, ``"16s2"`` the same with stride 2,
``"2tanh"`` a conv to 2 channels with tanh, ``"up"`` a x2 nearest-neighbour upsampling.
"""

from __future__ import annotations

import re

from torch import nn

_CONV = re.compile(r"^(?P<out>\d+)(?P<stride>s2)?(?P<tanh>tanh)?$")


def conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    """3x3 convolution, same padding (halves the size at stride 2)."""
    return nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1)


def conv_stack(in_channels: int, spec: list[str]) -> nn.Sequential:
    """A sequential CNN from a layer spec such as ``["8s2", "8", "up", "2tanh"]``."""
    layers: list[nn.Module] = []
    channels = in_channels
    for token in spec:
        if token == "up":
            layers.append(nn.Upsample(scale_factor=2, mode="nearest"))
            continue
        match = _CONV.match(token)
        if match is None:
            raise ValueError(
                f"bad layer token {token!r}: expected e.g. '16', '16s2', '2tanh', 'up'"
            )
        out = int(match["out"])
        layers.append(conv3x3(channels, out, stride=2 if match["stride"] else 1))
        layers.append(nn.Tanh() if match["tanh"] else nn.ReLU(inplace=True))
        channels = out
    return nn.Sequential(*layers)


def count_parameters(module: nn.Module, trainable_only: bool = True) -> int:
    """Number of (trainable) parameters of a module."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)
