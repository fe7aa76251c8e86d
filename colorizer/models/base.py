"""What every colorization model shares: the L/ab split, the steps, metrics and inference.

A subclass builds its network in ``__init__`` from plain values and implements ``forward``:
normalised L ``[B, 1, H, W]`` in [-1, 1] -> normalised ab ``[B, 2, H, W]`` in [-1, 1]
(README, Metrics). Batches arrive as uint8 sRGB ``[B, 3, H, W]``; Lab conversion happens
here, on the model's device, batch-wise.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

from colorizer.color import gray_baseline, luminance_of, merge_lab, split_lab
from colorizer.errors import ConfigError
from colorizer.hints import HINT_CHANNELS, HintPoint, HintSampling, hint_map, simulated_hints
from colorizer.metrics import colorization_metrics, update_metrics
from colorizer.models import frozen
from colorizer.models.backbones import load_pretrained, load_weights_file
from colorizer.models.blocks import conv_stack
from colorizer.models.spec import SPEC_KEY, ModelSpec
from colorizer.registry import MODELS

OPTIMIZERS = {
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
    # The seed recipes used Keras's RMSprop (rho 0.9, epsilon 1e-7). PyTorch's defaults
    # (alpha 0.99, eps 1e-8) make the first steps ~10x the learning rate, which saturated
    # beta's tanh within a few steps at lr 1e-3 (measured: loss 0.62 vs 0.058 after 60 steps).
    "rmsprop": functools.partial(torch.optim.RMSprop, alpha=0.9, eps=1e-7),
    "sgd": torch.optim.SGD,
}

EVAL_STAGES = ("val", "test")


def predict_ab_with(
    network: Callable[..., torch.Tensor],
    l_norm: torch.Tensor,
    *,
    input_size: int | None,
    size_multiple: int,
    hints: Sequence[Sequence[HintPoint]] | None = None,
) -> torch.Tensor:
    """Normalised ab ``[B, 2, H, W]`` float32 from ``network`` for L ``[B, 1, H, W]`` of any size.

    A fixed-size network (``input_size``) sees L resized to its working size and its ab is
    resized back (chroma is smooth, so little is lost); a fully convolutional one sees L padded
    to a multiple of its stride product (``size_multiple``), and the padding is cropped off.
    ``network`` is a model or an exported one (``colorizer.inference.OnnxNetwork``).
    ``hints`` (one ``HintPoint`` list per image, in fractions of the image) are drawn at the
    size the network sees; the padding has none.
    """
    height, width = l_norm.shape[-2:]

    def run(l_seen: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
        if hints is None:
            return network(l_seen).float()
        hint_seen = hint_map(hints, shape, l_seen.device)
        pad = (l_seen.shape[-2] - shape[0], l_seen.shape[-1] - shape[1])
        hint_seen = F.pad(hint_seen, (0, pad[1], 0, pad[0]))  # no hint in the padding
        return network(l_seen, hint_seen).float()

    if input_size is not None:
        working = (input_size, input_size)
        if (height, width) == working:
            return run(l_norm, working)
        small = F.interpolate(l_norm, size=working, mode="bilinear", antialias=True)
        # antialias: when the image is smaller than the working size, each output pixel
        # averages the chroma it covers (only shrinking is affected; enlarging is unchanged).
        ab = run(small, working)
        return F.interpolate(ab, size=(height, width), mode="bilinear", antialias=True)
    pad_h = math.ceil(height / size_multiple) * size_multiple - height
    pad_w = math.ceil(width / size_multiple) * size_multiple - width
    if pad_h or pad_w:
        l_norm = F.pad(l_norm, (0, pad_w, 0, pad_h), mode="replicate")
    return run(l_norm, (height, width))[..., :height, :width]


class ColorizationModule(L.LightningModule):
    """Base LightningModule: regression of ab from L with an MSE loss, evaluated in sRGB.

    Class attributes a subclass may set:
        input_size: the fixed working size of the network (None: fully convolutional).
        size_multiple: for fully convolutional nets, the factor H and W must be divisible by.
        allow_bf16: see below.
        small_settings: hyperparameters of a small but real instance of the architecture, for
            quick trials on a few CPU cores (the test suite trains each model with them).
    """

    input_size: int | None = None
    size_multiple: int = 1
    # Parts that tolerate it (fullcnn's frozen classifier) may run in bfloat16 where the
    # device computes it natively; colorizer.export turns this off (ONNX graphs are float32).
    allow_bf16: bool = True
    small_settings: ClassVar[dict[str, Any]] = {}

    def __init__(
        self,
        lr: float = 1e-3,
        optimizer: str = "adam",
        weight_decay: float = 0.0,
        hints: bool = False,
        hint_sampling: Mapping[str, Any] | None = None,
    ):  # pragma: no mutate block (a mutmut wrapper hides this frame from save_hyperparameters)
        super().__init__()
        if isinstance(lr, bool) or not isinstance(lr, int | float) or not lr > 0:
            raise ConfigError(f"model.lr must be a positive number, got {lr!r}")
        if optimizer not in OPTIMIZERS:
            choices = ", ".join(sorted(OPTIMIZERS))
            raise ConfigError(f"model.optimizer={optimizer!r} is not one of: {choices}")
        self.save_hyperparameters()
        self.takes_hints = bool(hints)
        self.hint_sampling = HintSampling(**(hint_sampling or {}))
        self.trained_image_size: int | None = None
        self.weight_sources: dict[str, str] = {}
        self._fingerprints: dict[tuple[str, str], str] = {}
        self._first_nonfinite: dict[str, torch.Tensor] = {}
        self.metrics = nn.ModuleDict()
        for stage in EVAL_STAGES:
            self.metrics[stage] = colorization_metrics().clone(prefix=f"{stage}/")
            self.metrics[f"{stage}_gray"] = colorization_metrics().clone(prefix=f"{stage}/gray_")

    def forward(self, l_norm: torch.Tensor, hints: torch.Tensor | None = None) -> torch.Tensor:
        """Normalised L ``[B, 1, H, W]`` (and, for a hint-taking model, a hint map
        ``[B, 3, H, W]``, ``colorizer.hints``; None: no hint) -> normalised ab ``[B, 2, H, W]``."""
        raise NotImplementedError

    @property
    def in_channels(self) -> int:
        """Channels of the network's input: L, plus the hint map for a hint-taking model."""
        return 1 + HINT_CHANNELS * self.takes_hints

    def network_input(self, l_norm: torch.Tensor, hints: torch.Tensor | None) -> torch.Tensor:
        """What the first layer sees: L ``[B, 1, H, W]``, or L and the hint map (zeros when
        there is no hint) ``[B, 4, H, W]``."""
        if not self.takes_hints:
            return l_norm
        if hints is None:
            shape = (l_norm.shape[0], HINT_CHANNELS, *l_norm.shape[2:])
            hints = l_norm.new_zeros(shape)
        return torch.cat([l_norm, hints.to(l_norm.dtype)], dim=1)

    def training_hints(self, ab_norm: torch.Tensor) -> torch.Tensor | None:
        """Simulated hints of a training batch's truth (None for a model without hints)."""
        return simulated_hints(ab_norm, self.hint_sampling) if self.takes_hints else None

    def pretrained_parts(self) -> dict[str, tuple[nn.Module, str | None, bool]]:
        """Submodules that start from pretrained weights: config prefix -> (module, file, download).

        E.g. ``{"model.backbone": (self.backbone, "w.pth", False)}`` reads the config keys
        ``model.backbone_weights`` and ``model.backbone_download``.
        """
        return {}

    def on_fit_start(self) -> None:
        # Lightning restores a resumed run's checkpoint before this hook, and that restores
        # every pretrained part too (``weight_sources``): only a fresh run loads them here.
        if not self.weight_sources:
            self.load_pretrained_weights()

    def load_pretrained_weights(self) -> dict[str, str]:
        """Load every pretrained part; returns where each one's weights came from."""
        for what, (module, weights, download) in self.pretrained_parts().items():
            self.weight_sources[what] = load_pretrained(
                module, weights=weights, download=download, what=what
            )
        self._fingerprints.clear()
        return self.weight_sources

    def frozen_parts(self) -> dict[str, tuple[str, nn.Module, str]]:
        """Pretrained parts that training never changes (no trainable parameter), which
        checkpoints reference instead of copying (``frozen.strip``): config prefix ->
        (state-dict prefix, module, source of its weights)."""
        prefixes = {id(module): name for name, module in self.named_modules()}
        return {
            what: (prefixes[id(module)], module, self.weight_sources.get(what, frozen.RANDOM))
            for what, (module, _, _) in self.pretrained_parts().items()
            if not any(parameter.requires_grad for parameter in module.parameters())
        }

    @property
    def spec(self) -> ModelSpec:
        """Its registry name, geometry and the size it was trained at (``ModelSpec``)."""
        name = MODELS.name_of(type(self)) or type(self).__qualname__
        return ModelSpec(
            name, self.size_multiple, self.input_size, self.trained_image_size, self.takes_hints
        )

    def set_training_size(self, size: int, key: str = "data.image_size") -> None:
        """Record the crop side it trains at (saved in checkpoints with the spec), refusing in
        one line a side the network cannot take. ``colorizer.run`` calls this before any data
        is read (inference takes any size: ``predict_ab`` resizes or pads)."""
        self.spec.check_training_size(size, key, self.size_hint())
        self.trained_image_size = size

    def size_hint(self) -> str:
        """More to say when a size is refused (a model with a size setting names it)."""
        return ""

    def apply_speed_options(self, compile: bool = False, channels_last: bool = False) -> None:
        """Speed-ups for GPUs, applied to each network submodule (not the metrics).

        ``channels_last``: the memory layout tensor cores want. ``compile``: ``torch.compile``
        of each network in place (``nn.Module.compile`` keeps the state-dict keys, so
        checkpoints stay loadable); never the whole LightningModule, whose compiled
        ``toggle_optimizer`` and logging break upstream.
        """
        for name, module in self.named_children():
            if name == "metrics":
                continue
            if channels_last:
                module.to(memory_format=torch.channels_last)
            if compile:
                module.compile()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        optimizer_class = OPTIMIZERS[self.hparams.optimizer]
        trainable = [p for p in self.parameters() if p.requires_grad]
        return optimizer_class(
            trainable, lr=self.hparams.lr, weight_decay=self.hparams.weight_decay
        )

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        loss = self.training_loss(batch)
        self.log("train/loss", loss, prog_bar=True)
        self.track_finite({"train/loss": loss})
        return loss

    @property
    def data_epoch(self) -> int:
        """The epoch of the batch being trained, counted from 0.

        Training reads an endless stream (``colorizer.data.stream``), so Lightning's own
        ``current_epoch`` stays 0; the datamodule counts the passes. Without one (a loader
        passed to ``fit`` directly) Lightning's count is the only one there is.
        """
        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer else None
        return getattr(datamodule, "epoch", self.current_epoch)

    def track_finite(self, losses: dict[str, torch.Tensor]) -> None:
        """Remember the first step at which each loss was NaN or infinite, on the device.

        No host sync: ``first_nonfinite_loss()`` reads the result when a check is due
        (``colorizer.callbacks.NonFiniteGuard``).
        """
        for name, loss in losses.items():
            first = self._first_nonfinite.get(name)
            if first is None:
                first = torch.full((), -1, dtype=torch.long, device=loss.device)
            bad = ~torch.isfinite(loss.detach()) & (first < 0)
            self._first_nonfinite[name] = torch.where(bad, self.global_step, first)

    def first_nonfinite_loss(self) -> tuple[int, str] | None:
        """(step, loss name) of the earliest non-finite loss seen, or None (reads the device)."""
        seen = [(int(step), name) for name, step in self._first_nonfinite.items()]
        seen = [(step, name) for step, name in seen if step >= 0]
        return min(seen) if seen else None

    def training_loss(self, batch: torch.Tensor) -> torch.Tensor:
        """The loss Lightning's automatic optimization minimises, for uint8 ``[B, 3, H, W]``
        (also what a plain PyTorch loop calls, as ``colorizer.bench`` does)."""
        l_norm, ab_norm = split_lab(batch)
        hints = self.training_hints(ab_norm)
        # A model of another package may predate hints: its forward then takes L alone.
        prediction = self(l_norm) if hints is None else self(l_norm, hints)
        return F.mse_loss(prediction.float(), ab_norm)

    def validation_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        return self._evaluate(batch, "val")

    def test_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        return self._evaluate(batch, "test")

    def _evaluate(self, batch: torch.Tensor, stage: str) -> torch.Tensor:
        """Metrics of uint8 ``[B, 3, H, W]``; returns the prediction, sRGB ``[B, 3, H, W]`` in
        [0, 1], which the sample grids show (no second forward pass)."""
        l_norm, ab_norm = split_lab(batch)
        pred_ab = self.predict_ab(l_norm)
        truth = batch.float() / 255.0
        prediction = merge_lab(l_norm, pred_ab)
        update_metrics(self.metrics[stage], prediction, truth)
        update_metrics(self.metrics[f"{stage}_gray"], gray_baseline(l_norm), truth)
        batch_size = batch.shape[0]
        # sync_dist: under DDP each process sees its share of the split; once per epoch.
        loss = F.mse_loss(pred_ab, ab_norm)
        self.log(f"{stage}/loss", loss, batch_size=batch_size, sync_dist=True)
        self.log_dict(self.metrics[stage], batch_size=batch_size, prog_bar=stage == "val")
        self.log_dict(self.metrics[f"{stage}_gray"], batch_size=batch_size)
        return prediction

    def predict_ab(
        self, l_norm: torch.Tensor, hints: Sequence[Sequence[HintPoint]] | None = None
    ) -> torch.Tensor:
        """Normalised ab ``[B, 2, H, W]`` for normalised L ``[B, 1, H, W]`` of any size, with
        each image's hints (``HintPoint`` lists) if any."""
        return predict_ab_with(
            self, l_norm, input_size=self.input_size, size_multiple=self.size_multiple,
            hints=self.checked_hints(hints, l_norm.shape[0]),
        )  # fmt: skip

    def checked_hints(
        self, hints: Sequence[Sequence[HintPoint]] | None, batch: int
    ) -> Sequence[Sequence[HintPoint]] | None:
        """``hints`` if this model takes them (one list per image); a ConfigError otherwise."""
        if hints is None or not any(hints):
            return None
        if not self.takes_hints:
            raise ConfigError(
                f"model={self.spec.name} takes no hints: train it with model.hints=true"
            )
        if len(hints) != batch:
            raise ValueError(f"{len(hints)} hint lists for {batch} images")
        return hints

    @torch.no_grad()
    def colorize(
        self, images: torch.Tensor, hints: Sequence[Sequence[HintPoint]] | None = None
    ) -> torch.Tensor:
        """Colorize float images in [0, 1], ``[B, 1 or 3, H, W]`` -> sRGB ``[B, 3, H, W]``.

        RGB input is reduced to its luminance first; the output keeps the input's L (colours
        outside the sRGB gamut are desaturated, not clipped) and its size. ``hints``: for a
        hint-taking model, one list of ``colorizer.hints.HintPoint`` per image. Call ``eval()``
        first (``load_model`` does).
        """
        l_norm = luminance_of(images.to(self.device))
        return merge_lab(l_norm, self.predict_ab(l_norm, hints), keep_lightness=True)

    @torch.no_grad()
    def sample_triplets(self, batch: torch.Tensor) -> torch.Tensor:
        """uint8 ``[B, 3, H, W]`` -> ``[B, 3, 3, H, W]``: gray, prediction, truth in [0, 1]."""
        l_norm, _ = split_lab(batch)
        return triplets(batch, merge_lab(l_norm, self.predict_ab(l_norm)))

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # Lets colorizer.load_model rebuild the right class without Hydra or the config.
        checkpoint["colorizer_model"] = f"{type(self).__module__}:{type(self).__qualname__}"
        checkpoint[SPEC_KEY] = self.spec.to_dict()
        frozen.strip(checkpoint, self.frozen_parts(), self._fingerprints)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        if self.trained_image_size is None:  # a resumed run keeps the size it trains at now
            self.trained_image_size = trained_size(checkpoint)
        modules = {what: module for what, (module, _, _) in self.pretrained_parts().items()}
        restored = frozen.restore(checkpoint, modules, self._load_weights_file)
        # Parts not referenced were stored in the checkpoint: it is their source from now on.
        self.weight_sources = {what: restored.get(what, "checkpoint") for what in modules}

    @staticmethod
    def _load_weights_file(module: nn.Module, path: Path, what: str) -> None:
        load_weights_file(module, path, what)


class PlainCNNColorizer(ColorizationModule):
    """A plain sequential CNN from a layer spec (``blocks.conv_stack``); alpha and beta.

    Subclasses set ``layers``. RMSprop by default, as in the seed recipes.
    """

    layers: tuple[str, ...] = ()
    size_multiple = 8

    def __init__(
        self,
        lr: float = 1e-3,
        optimizer: str = "rmsprop",
        weight_decay: float = 0.0,
        hints: bool = False,
        hint_sampling: Mapping[str, Any] | None = None,
    ):  # pragma: no mutate block (a mutmut wrapper hides this frame from save_hyperparameters)
        super().__init__(lr, optimizer, weight_decay, hints, hint_sampling)
        self.net = conv_stack(self.in_channels, list(self.layers))

    def forward(self, l_norm: torch.Tensor, hints: torch.Tensor | None = None) -> torch.Tensor:
        return self.net(self.network_input(l_norm, hints))


def trained_size(checkpoint: dict) -> int | None:
    """The crop side a checkpoint's model was trained at: its spec's, or for checkpoints
    written before the spec, its datamodule's ``image_size``; None if neither says."""
    saved = checkpoint.get(SPEC_KEY) or {}
    size = saved.get("image_size") or (checkpoint.get("datamodule_hyper_parameters") or {}).get(
        "image_size"
    )
    return int(size) if size else None


def triplets(batch: torch.Tensor, prediction: torch.Tensor) -> torch.Tensor:
    """uint8 ``[B, 3, H, W]`` and its prediction, sRGB ``[B, 3, H, W]`` in [0, 1] ->
    ``[B, 3, 3, H, W]``: gray baseline, prediction, truth in [0, 1]."""
    l_norm, _ = split_lab(batch)
    return torch.stack([gray_baseline(l_norm), prediction.float(), batch.float() / 255.0], dim=1)
