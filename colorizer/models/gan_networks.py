"""The GAN's networks: pix2pix U-Net and ResNet-18 U-Net generators, PatchGAN discriminator.

All map normalised L ``[B, 1, H, W]`` (generators) or concat(L, ab) ``[B, 3, H, W]``
(discriminator), normalised as the README's colour conventions say; generators end in
``tanh`` (ab in [-1, 1]).
"""

from __future__ import annotations

import torch
from torch import nn

from colorizer.models.backbones import create_timm


class UnetBlock(nn.Module):
    """One level of the pix2pix U-Net: 4x4 stride-2 down, the inner levels, 4x4 stride-2 up.

    Non-outermost levels return concat(input, output): the skip connection. As in pix2pix,
    only the outermost up-convolution has a bias (BatchNorm would cancel the others').
    """

    def __init__(
        self,
        outer: int,
        inner: int,
        submodule: nn.Module | None = None,
        in_channels: int | None = None,
        outermost: bool = False,
        dropout: bool = False,
    ) -> None:
        super().__init__()
        self.outermost = outermost
        innermost = submodule is None
        down = nn.Conv2d(in_channels or outer, inner, 4, stride=2, padding=1, bias=False)
        up_in = inner if innermost else inner * 2
        if outermost:
            up = nn.ConvTranspose2d(up_in, outer, 4, stride=2, padding=1)
            layers = [down, submodule, nn.ReLU(True), up, nn.Tanh()]
        elif innermost:
            up = nn.ConvTranspose2d(up_in, outer, 4, stride=2, padding=1, bias=False)
            layers = [nn.LeakyReLU(0.2, True), down, nn.ReLU(True), up, nn.BatchNorm2d(outer)]
        else:
            up = nn.ConvTranspose2d(up_in, outer, 4, stride=2, padding=1, bias=False)
            layers = [
                nn.LeakyReLU(0.2, True), down, nn.BatchNorm2d(inner), submodule,
                nn.ReLU(True), up, nn.BatchNorm2d(outer),
            ]  # fmt: skip
            if dropout:
                layers.append(nn.Dropout(0.5))
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x) if self.outermost else torch.cat([x, self.model(x)], dim=1)


class UnetGenerator(nn.Module):
    """pix2pix U-Net with ``depth`` down-samplings (8: 256² -> 1²; 54,409,858 parameters).

    Input sides must be multiples of ``2 ** depth``. Dropout 0.5 in the ``depth - 5``
    innermost 512-channel up blocks (three for depth 8).
    """

    def __init__(self, in_channels: int = 1, out_channels: int = 2, depth: int = 8, base: int = 64):
        super().__init__()
        if depth < 5:
            raise ValueError(f"model.depth={depth}: the U-Net needs at least 5 levels")
        block = UnetBlock(base * 8, base * 8)
        for _ in range(depth - 5):
            block = UnetBlock(base * 8, base * 8, submodule=block, dropout=True)
        for scale in (4, 2, 1):
            block = UnetBlock(base * scale, base * scale * 2, submodule=block)
        self.model = UnetBlock(out_channels, base, block, in_channels=in_channels, outermost=True)

    def forward(self, l_norm: torch.Tensor) -> torch.Tensor:
        return self.model(l_norm)


class ResNetUnet(nn.Module):
    """U-Net whose encoder is a timm ResNet-18 (1-channel input); sides: multiples of 32.

    The published tutorial's best recipe: the encoder starts from ImageNet weights and the
    generator is pre-trained with L1 alone before the adversarial phase.
    """

    def __init__(self, out_channels: int = 2, encoder: str = "resnet18", in_channels: int = 1):
        super().__init__()
        self.encoder = create_timm(encoder, features_only=True, in_chans=in_channels)
        skips = self.encoder.feature_info.channels()  # strides 2, 4, 8, 16, 32
        channels = skips[-1]
        self.up_blocks = nn.ModuleList()
        for skip in reversed(skips[:-1]):
            out = max(skip, 64)
            self.up_blocks.append(_UpBlock(channels, skip, out))
            channels = out
        self.head = nn.Sequential(
            nn.Upsample(scale_factor=2, mode="nearest"),
            nn.Conv2d(channels + in_channels, 32, 3, padding=1),
            nn.ReLU(True),
            nn.Conv2d(32, out_channels, 1),
            nn.Tanh(),
        )

    def forward(self, l_norm: torch.Tensor) -> torch.Tensor:
        *skips, x = self.encoder(l_norm)
        for block, skip in zip(self.up_blocks, reversed(skips), strict=True):
            x = block(x, skip)
        x = self.head[0](x)
        return self.head[1:](torch.cat([x, l_norm], dim=1))


class _UpBlock(nn.Module):
    """x2 upsampling, concat with the encoder's skip, two 3x3 conv + BatchNorm + ReLU."""

    def __init__(self, in_channels: int, skip: int, out: int) -> None:
        super().__init__()
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.convs = nn.Sequential(
            nn.Conv2d(in_channels + skip, out, 3, padding=1, bias=False),
            nn.BatchNorm2d(out),
            nn.ReLU(True),
            nn.Conv2d(out, out, 3, padding=1, bias=False),
            nn.BatchNorm2d(out),
            nn.ReLU(True),
        )

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.convs(torch.cat([self.up(x), skip], dim=1))


class PatchDiscriminator(nn.Module):
    """PatchGAN: 4x4 convs 64-128-256-512 (the last two at stride 1) -> one logit per patch.

    ``[B, 3, 256, 256]`` -> ``[B, 1, 30, 30]`` logits (2,765,633 parameters).
    """

    def __init__(self, in_channels: int = 3, base: int = 64, n_down: int = 3) -> None:
        super().__init__()
        layers = [nn.Conv2d(in_channels, base, 4, stride=2, padding=1), nn.LeakyReLU(0.2, True)]
        channels = base
        for i in range(n_down):
            out, stride = base * 2 ** (i + 1), 1 if i == n_down - 1 else 2
            layers += [
                nn.Conv2d(channels, out, 4, stride=stride, padding=1, bias=False),
                nn.BatchNorm2d(out),
                nn.LeakyReLU(0.2, True),
            ]
            channels = out
        layers.append(nn.Conv2d(channels, 1, 4, stride=1, padding=1))
        self.model = nn.Sequential(*layers)

    def forward(self, lab_norm: torch.Tensor) -> torch.Tensor:
        return self.model(lab_norm)


def init_normal(module: nn.Module, std: float = 0.02) -> None:
    """pix2pix initialisation: conv weights N(0, std), BatchNorm weights N(1, std), biases 0."""
    for layer in module.modules():
        if isinstance(layer, nn.Conv2d | nn.ConvTranspose2d):
            nn.init.normal_(layer.weight, 0.0, std)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)
        elif isinstance(layer, nn.BatchNorm2d):
            nn.init.normal_(layer.weight, 1.0, std)
            nn.init.zeros_(layer.bias)
