"""gan: pix2pix-style conditional GAN (U-Net generator + PatchGAN discriminator).

Manual optimization in the canonical Lightning shape: a discriminator step on real and
detached fake pairs, then a generator step (adversarial + ``lambda_l1`` x L1). Two optimizer
steps per batch, so ``global_step`` (and ``trainer.max_steps``) advances twice per batch in
the adversarial phase and once per batch in the L1-only pre-training phase.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from colorizer.color import split_lab
from colorizer.errors import ConfigError
from colorizer.models.base import ColorizationModule
from colorizer.models.gan_networks import (
    PatchDiscriminator,
    ResNetUnet,
    UnetGenerator,
    init_normal,
)

GENERATORS = ("unet", "resnet18")


class GANColorizer(ColorizationModule):
    """Conditional GAN colorizer.

    Args:
        lr: Adam learning rate of both networks (2e-4 in pix2pix and the tutorial).
        betas: Adam betas of both networks.
        lambda_l1: weight of the L1 term in the generator loss.
        generator: ``unet`` (pix2pix, 54,409,858 parameters at depth 8, base 64) or
            ``resnet18`` (a timm ResNet-18 encoder U-Net).
        depth, base_channels: the pix2pix U-Net's down-samplings and first-level width; its
            working size is ``2 ** depth`` (256 for depth 8).
        disc_channels: the PatchGAN's first-level width (64).
        pretrain_epochs: epochs of L1-only generator training before the adversarial phase.
        encoder_weights, encoder_download: pretrained ResNet-18 weights (``resnet18`` only).
    """

    # A 32-pixel U-Net (fully convolutional: it trains at any multiple of 32) with narrow
    # networks: 0.9 M + 0.2 M parameters.
    small_settings = {"depth": 5, "base_channels": 16, "disc_channels": 16}

    def __init__(
        self,
        lr: float = 2e-4,
        betas: tuple[float, float] = (0.5, 0.999),
        lambda_l1: float = 100.0,
        generator: str = "unet",
        depth: int = 8,
        base_channels: int = 64,
        disc_channels: int = 64,
        pretrain_epochs: int = 0,
        encoder_weights: str | None = None,
        encoder_download: bool = False,
        hints: bool = False,
        hint_sampling: Mapping[str, Any] | None = None,
    ):  # pragma: no mutate block (a mutmut wrapper hides this frame from save_hyperparameters)
        super().__init__(lr, "adam", 0.0, hints, hint_sampling)
        self.automatic_optimization = False
        if generator == "unet":
            self.generator = UnetGenerator(self.in_channels, 2, depth=depth, base=base_channels)
            self.input_size = 2**depth
            init_normal(self.generator)
        elif generator == "resnet18":
            self.generator = ResNetUnet(2, encoder="resnet18", in_channels=self.in_channels)
            self.size_multiple = 32
            init_normal(self.generator.up_blocks)
            init_normal(self.generator.head)
        else:
            raise ConfigError(
                f"model.generator={generator!r} is not one of: {', '.join(GENERATORS)}"
            )
        self.discriminator = PatchDiscriminator(3, base=disc_channels)
        init_normal(self.discriminator)

    def forward(self, l_norm: torch.Tensor, hints: torch.Tensor | None = None) -> torch.Tensor:
        return self.generator(self.network_input(l_norm, hints))

    def pretrained_parts(self) -> dict[str, tuple[nn.Module, str | None, bool]]:
        if self.hparams.generator != "resnet18":
            return {}
        encoder = self.generator.encoder
        return {
            "model.encoder": (encoder, self.hparams.encoder_weights, self.hparams.encoder_download)
        }

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        betas = tuple(self.hparams.betas)
        return [
            torch.optim.Adam(self.generator.parameters(), lr=self.hparams.lr, betas=betas),
            torch.optim.Adam(self.discriminator.parameters(), lr=self.hparams.lr, betas=betas),
        ]

    def size_hint(self) -> str:
        return " or a smaller model.depth" if self.hparams.generator == "unet" else ""

    @property
    def adversarial(self) -> bool:
        """False during the L1-only pre-training epochs."""
        return self.data_epoch >= self.hparams.pretrain_epochs

    def _patch_loss(self, l_norm: torch.Tensor, ab_norm: torch.Tensor, real: bool) -> torch.Tensor:
        logits = self.discriminator(torch.cat([l_norm, ab_norm.to(l_norm.dtype)], dim=1)).float()
        target = torch.ones_like(logits) if real else torch.zeros_like(logits)
        return F.binary_cross_entropy_with_logits(logits, target)

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> None:
        opt_g, opt_d = self.optimizers()
        logs = self.optimization_step(batch, opt_g, opt_d, backward=self.manual_backward)
        self.log_dict(logs, prog_bar=True, batch_size=batch.shape[0])
        self.track_finite(logs)

    def optimization_step(
        self,
        batch: torch.Tensor,
        opt_g: torch.optim.Optimizer,
        opt_d: torch.optim.Optimizer,
        backward: Callable[[torch.Tensor], None],
    ) -> dict[str, torch.Tensor]:
        """One batch of training: a D step (adversarial phase only), then a G step.

        Lightning's ``training_step`` calls it with its optimizers and ``manual_backward``; a
        plain PyTorch loop (``colorizer.bench``) with plain ones and ``Tensor.backward``, so
        both run exactly this math. Returns the losses, as tensors (no host sync).
        """
        l_norm, ab_norm = split_lab(batch)
        fake_ab = self(l_norm, self.training_hints(ab_norm))
        logs = {}
        if self.adversarial:
            d_loss = 0.5 * (
                self._patch_loss(l_norm, ab_norm, real=True)
                + self._patch_loss(l_norm, fake_ab.detach(), real=False)
            )
            opt_d.zero_grad(set_to_none=True)
            backward(d_loss)
            opt_d.step()
            logs["train/d_loss"] = d_loss

        # The G step must not accumulate gradients into D, which it only looks through.
        with frozen(self.discriminator):
            l1 = F.l1_loss(fake_ab.float(), ab_norm)
            g_loss = self.hparams.lambda_l1 * l1
            if self.adversarial:
                g_adv = self._patch_loss(l_norm, fake_ab, real=True)
                g_loss = g_loss + g_adv
                logs["train/g_adv"] = g_adv
            opt_g.zero_grad(set_to_none=True)
            backward(g_loss)
        opt_g.step()
        logs.update({"train/g_loss": g_loss, "train/l1": l1})
        return logs


@contextlib.contextmanager
def frozen(module: nn.Module) -> Iterator[None]:
    """Within the block, ``module``'s parameters take no gradients (then restored)."""
    flags = [(p, p.requires_grad) for p in module.parameters()]
    for parameter, _ in flags:
        parameter.requires_grad_(False)
    try:
        yield
    finally:
        for parameter, flag in flags:
            parameter.requires_grad_(flag)
