"""fullcnn: Deep-Koalarization-style encoder-decoder fused with a frozen classifier's embedding.

Trainable: encoder 5,827,200 + fusion 321,792 + decoder 392,210 = 6,541,202 parameters, plus a
frozen Inception-ResNet-v2 (timm ``inception_resnet_v2``, ~55.8 M) that embeds the grayscale
image into its 1000 class probabilities (Baldassarre et al., 2017).

Where it follows the Keras seed rather than Deep Koalarization (Baldassarre et al.'s paper and
code): the decoder is the seed's (conv 128, up, conv 64, up, conv 32, conv 16, conv 2 tanh,
up), where Deep Koalarization's is conv 128, up, conv 64, conv 64, up, conv 32, conv 2 tanh,
up; and the embedding is the classifier's softmax, where Deep Koalarization takes the layer
before it. ``embedding="logits"`` gives that: unbounded class scores, which keep the relative
evidence for classes that a softmax squashes to ~0 (the encoder, fusion and decoder stay the
seed's, so parameter counts and checkpoints are unchanged). The encoder and the 1x1 fusion to
256 channels with ReLU are the same in both.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from colorizer.color import gray_baseline
from colorizer.errors import ConfigError
from colorizer.models.backbones import create_timm, freeze, native_bf16
from colorizer.models.base import ColorizationModule
from colorizer.models.blocks import conv_stack

ENCODER_LAYERS = ["64s2", "128", "128s2", "256", "256s2", "512", "512", "256"]
DECODER_LAYERS = ["128", "up", "64", "up", "32", "16", "2tanh", "up"]
EMBEDDING_DIM = 1000  # the classifier's 1000 ImageNet classes
EMBEDDINGS = ("softmax", "logits")


class FullCNNColorizer(ColorizationModule):
    """Encoder (to 1/8 size, 256 channels) + tiled embedding -> 1x1 fusion -> decoder.

    The embedding is computed once per batch, without gradients, from the grayscale image
    (the L channel as gray sRGB, replicated to 3 channels), resized to ``embedding_size``
    (default: the backbone's own input size, 299²) and normalised with the backbone's own
    mean and std: Inception weights expect [-1, 1] (the reference fed [0, 1]; not repeated).

    Pretrained backbone weights are loaded by ``load_pretrained_weights()``, which
    ``on_fit_start()`` calls before training. Checkpoints reference the frozen backbone by its
    source and fingerprint instead of storing it (``colorizer.models.frozen``).
    """

    size_multiple = 8
    # timm's 0.47 M-parameter test network as the frozen classifier, through the same code
    # as the default Inception-ResNet-v2 (55.8 M), at a small embedding input.
    small_settings = {"backbone": "test_resnet", "embedding_size": 64}

    def __init__(
        self,
        lr: float = 1e-3,
        optimizer: str = "adam",
        weight_decay: float = 0.0,
        backbone: str = "inception_resnet_v2",
        backbone_weights: str | None = None,
        backbone_download: bool = False,
        embedding_size: int | None = None,
        embedding: str = "softmax",
        hints: bool = False,
        hint_sampling: Mapping[str, Any] | None = None,
    ):
        super().__init__(lr, optimizer, weight_decay, hints, hint_sampling)
        if embedding not in EMBEDDINGS:
            raise ConfigError(
                f"model.embedding={embedding!r} is not one of: {', '.join(EMBEDDINGS)}"
            )
        self.encoder = conv_stack(self.in_channels, ENCODER_LAYERS)
        self.fusion = nn.Sequential(nn.Conv2d(256 + EMBEDDING_DIM, 256, 1), nn.ReLU(inplace=True))
        self.decoder = conv_stack(256, DECODER_LAYERS)
        self.backbone = freeze(create_timm(backbone, num_classes=EMBEDDING_DIM))
        # channels_last: ~20 % faster on this CPU (oneDNN) and the layout tensor cores want.
        self.backbone.to(memory_format=torch.channels_last)
        config = self.backbone.pretrained_cfg
        self.embedding_size = embedding_size or config["input_size"][-1]
        self.register_buffer("backbone_mean", torch.tensor(config["mean"]).view(1, 3, 1, 1), False)
        self.register_buffer("backbone_std", torch.tensor(config["std"]).view(1, 3, 1, 1), False)

    def pretrained_parts(self) -> dict[str, tuple[nn.Module, str | None, bool]]:
        hparams = self.hparams
        return {
            "model.backbone": (self.backbone, hparams.backbone_weights, hparams.backbone_download)
        }

    def train(self, mode: bool = True) -> FullCNNColorizer:
        super().train(mode)
        self.backbone.eval()  # frozen: BatchNorm statistics and dropout stay in inference mode
        return self

    def backbone_input(self, l_norm: torch.Tensor) -> torch.Tensor:
        """Normalised L ``[B, 1, H, W]`` -> the backbone's input ``[B, 3, S, S]``, normalised."""
        gray = gray_baseline(l_norm)  # sRGB in [0, 1] with R = G = B
        size = (self.embedding_size, self.embedding_size)
        gray = F.interpolate(gray, size=size, mode="bilinear", antialias=True).clamp(0, 1)
        normalised = (gray - self.backbone_mean) / self.backbone_std
        return normalised.contiguous(memory_format=torch.channels_last)

    @torch.no_grad()
    def embed(self, l_norm: torch.Tensor) -> torch.Tensor:
        """The grayscale image's class embedding ``[B, 1000]``: probabilities (``softmax``, the
        Keras seed's) or the scores before the softmax (``logits``, Deep Koalarization's).

        The frozen classifier runs in bfloat16 where the device computes it natively and
        ``allow_bf16`` is set: it costs 64 % of a training step in float32 on a 2-core CPU,
        half that in bf16, and its probabilities move by ~2e-7.
        """
        bf16 = self.allow_bf16 and native_bf16(l_norm.device)
        with torch.autocast(l_norm.device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = self.backbone(self.backbone_input(l_norm)).float()
        return logits if self.hparams.embedding == "logits" else logits.softmax(dim=1)

    def forward(self, l_norm: torch.Tensor, hints: torch.Tensor | None = None) -> torch.Tensor:
        features = self.encoder(self.network_input(l_norm, hints))
        embedding = self.embed(l_norm).to(features.dtype)
        tiled = embedding[:, :, None, None].expand(-1, -1, *features.shape[-2:])
        return self.decoder(self.fusion(torch.cat([features, tiled], dim=1)))
