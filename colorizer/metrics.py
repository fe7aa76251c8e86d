"""Colorization metrics (README, Metrics), on the model's device, synchronised across ranks.

All image metrics compare sRGB float images in [0, 1], shape ``[B, 3, H, W]``:

- ``psnr``: per image with ``data_range=1``, then averaged over images (so one easy image
  cannot hide many bad ones, as a pixel-pooled PSNR would);
- ``mse``: squared error averaged over every pixel and channel, on the [0, 1] scale;
- ``ssim``: structural similarity on [0, 1], averaged over images;
- ``cf``: Hasler & Süsstrunk colourfulness of the prediction on the 0-255 scale, averaged;
- ``delta_cf``: ``|mean CF(prediction) - mean CF(truth)|``, how far from natural colourfulness.

The gray baseline (ab = 0) is measured with a clone of the same collection, prefixed
``<stage>/gray_``, because PSNR alone rewards dull output.

``colorizer.evaluate`` adds FID and LPIPS (``perceptual_metrics``) where their weights are
already on the machine: they are never downloaded.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import torch
from torchmetrics import Metric, MetricCollection
from torchmetrics.image import StructuralSimilarityIndexMeasure
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity
from torchmetrics.regression import MeanSquaredError
from torchvision.models import AlexNet_Weights

from colorizer.errors import ConfigError

# Table headings of the metrics, in the order reports show them.
METRIC_COLUMNS = {"psnr": "PSNR (dB)", "mse": "MSE", "ssim": "SSIM", "cf": "CF", "delta_cf": "ΔCF"}
METRIC_COLUMNS |= {"fid": "FID", "lpips": "LPIPS"}
METRIC_DEFINITIONS = (
    "sRGB in [0, 1]; PSNR (data_range 1) per image, then averaged over images; MSE over all "
    "pixels; SSIM on [0, 1]; CF: Hasler-Süsstrunk colourfulness on 0-255, per image, averaged; "
    "ΔCF = |mean CF(prediction) - mean CF(truth)|; gray baseline: the same images with ab = 0."
)

PSNR_MIN_MSE = 1e-10
"""MSE floor for PSNR (caps a perfect image at 100 dB instead of inf, which would poison a mean)."""


def psnr_per_image(preds: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """PSNR in dB of each image, ``data_range=1``: ``[B, C, H, W]`` x2 -> ``[B]``."""
    mse = (preds.float() - target.float()).pow(2).flatten(1).mean(dim=1)
    return -10.0 * torch.log10(mse.clamp_min(PSNR_MIN_MSE))


def colourfulness(images: torch.Tensor) -> torch.Tensor:
    """Hasler & Süsstrunk (2003) colourfulness of each RGB image in [0, 1]: ``[B]``, 0-255 scale.

    ``rg = R - G``, ``yb = (R + G) / 2 - B``;
    ``CF = sqrt(std(rg)^2 + std(yb)^2) + 0.3 * sqrt(mean(rg)^2 + mean(yb)^2)``
    with population standard deviations over the pixels of each image.
    """
    rgb = images.float().flatten(2) * 255.0
    red, green, blue = rgb[:, 0], rgb[:, 1], rgb[:, 2]
    rg = red - green
    yb = 0.5 * (red + green) - blue
    spread = torch.sqrt(rg.var(dim=1, unbiased=False) + yb.var(dim=1, unbiased=False))
    offset = torch.sqrt(rg.mean(dim=1).pow(2) + yb.mean(dim=1).pow(2))
    return spread + 0.3 * offset


class _ImageMean(Metric):
    """Mean over images of a per-image score; subclasses define ``score(preds, target) -> [B]``."""

    full_state_update = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state(
            "total", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum"
        )
        self.add_state("count", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def score(self, preds: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        values = self.score(preds, target)
        self.total += values.double().sum()
        self.count += values.numel()

    def compute(self) -> torch.Tensor:
        return (self.total / self.count.clamp_min(1)).float()


class ImagePSNR(_ImageMean):
    """PSNR per image (data_range 1), averaged over images."""

    higher_is_better = True

    def score(self, preds: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return psnr_per_image(preds, target)


class Colourfulness(_ImageMean):
    """Mean colourfulness of the predictions (the target is ignored)."""

    higher_is_better = None

    def score(self, preds: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return colourfulness(preds)


class ColourfulnessGap(Metric):
    """``|mean CF(preds) - mean CF(target)|`` over all images: 0 is natural colourfulness."""

    full_state_update = False
    higher_is_better = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        zero = torch.tensor(0.0, dtype=torch.float64)
        self.add_state("pred_total", default=zero.clone(), dist_reduce_fx="sum")
        self.add_state("target_total", default=zero.clone(), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        self.pred_total += colourfulness(preds).double().sum()
        self.target_total += colourfulness(target).double().sum()
        self.count += preds.shape[0]

    def compute(self) -> torch.Tensor:
        count = self.count.clamp_min(1)
        return ((self.pred_total - self.target_total).abs() / count).float()


# Where PyTorch keeps the float32 precision of convolutions and matrix products: cuDNN's
# convolutions default to TF32 (Ampere and later GPUs); oneDNN's follow the user's choice.
_FLOAT32_PRECISION_SETTINGS = (
    torch.backends.cudnn.conv,
    torch.backends.mkldnn.conv,
    torch.backends.cuda.matmul,
    torch.backends.mkldnn.matmul,
)


@contextlib.contextmanager
def full_float32() -> Iterator[None]:
    """Float32 convolutions and matrix products at full (IEEE) precision within the block,
    whatever ``fp32_precision`` says (TF32 or bf16); the settings are restored after."""
    saved = [(backend, backend.fp32_precision) for backend in _FLOAT32_PRECISION_SETTINGS]
    try:
        for backend, _ in saved:
            backend.fp32_precision = "ieee"
        yield
    finally:
        for backend, value in saved:
            backend.fp32_precision = value


def update_metrics(metrics: MetricCollection, preds: torch.Tensor, target: torch.Tensor) -> None:
    """Update in float32 at full precision, whatever precision the step runs in.

    SSIM filters with a convolution, and its local variances are differences of nearly equal
    terms (``conv(x²) - conv(x)²``), so the convolution's precision decides the result: under
    bf16 autocast a gray baseline scored SSIM -0.08; in TF32, which GPUs from Ampere on use
    for float32 convolutions by default, SSIM of photographs drops by ~0.003-0.03. So autocast
    is off and TF32 (or bf16) convolutions are switched off around the update. (float64 would
    do too, but its convolutions are ~30x slower on a CPU.)
    """
    with torch.autocast(device_type=preds.device.type, enabled=False), full_float32():
        metrics.update(preds.float(), target.float())


def colorization_metrics() -> MetricCollection:
    """The one metric collection; clone it per stage, e.g. ``.clone(prefix="val/")``."""
    return MetricCollection(
        {
            "psnr": ImagePSNR(),
            "mse": MeanSquaredError(),
            "ssim": StructuralSimilarityIndexMeasure(data_range=1.0),
            "cf": Colourfulness(),
            "delta_cf": ColourfulnessGap(),
        },
        compute_groups=False,
    )


def computed_or_nan(metric: Metric) -> float:
    """The metric's value; NaN where it has none (e.g. FID of fewer than two images)."""
    try:
        return float(metric.compute())
    except (RuntimeError, ValueError):
        return math.nan


class PairedFID(FrechetInceptionDistance):
    """FID of predictions vs their truths, with the ``update(preds, target)`` of the others."""

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:  # type: ignore[override]
        super().update(target, real=True)
        super().update(preds, real=False)


def perceptual_metrics(fid_weights: str | None = None) -> tuple[dict[str, Metric], str | None]:
    """FID and LPIPS where their weights are on this machine; nothing is downloaded.

    FID's Inception is torch-fidelity's (``fid_weights``: its weights file, else the one in
    torch hub's cache); LPIPS needs torchvision's AlexNet weights in that cache. Returns the
    metrics built, and one line naming those skipped and why (None if none was). A
    ``fid_weights`` file that does not exist is a ConfigError.
    """
    if fid_weights is not None and not Path(fid_weights).is_file():
        raise ConfigError(
            f"fid_weights={fid_weights} does not exist: pass FID's Inception weights file "
            "(pt_inception-2015-12-05-6726825d.pth) or null"
        )
    metrics: dict[str, Metric] = {}
    why_not = []
    for name, build in (("FID", lambda: _fid(fid_weights)), ("LPIPS", _lpips)):
        try:
            metrics[name.lower()] = build()
        except ImportError as err:
            package = "torch-fidelity" if "fidelity" in str(err.name or err) else err.name
            why_not.append(f"{name}: package {package} is not installed (pip install {package})")
        except FileNotFoundError as err:
            why_not.append(f"{name}: {err}")
    if not why_not:
        return metrics, None
    names = ", ".join(line.split(":")[0] for line in why_not)
    return metrics, f"{names}: skipped (weights not available locally: {'; '.join(why_not)})"


def _fid(weights: str | None) -> Metric:
    from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3

    path = Path(weights) if weights else _cached(URL_INCEPTION_V3, "or fid_weights=PATH")
    return PairedFID(normalize=True, feature_extractor_weights_path=str(path))


def _lpips() -> Metric:
    _cached(AlexNet_Weights.DEFAULT.url)  # the default backbone's ImageNet weights
    # torchvision finds them in the cache; the downloader is disabled in case it would not.
    with mock.patch("torch.hub.download_url_to_file", side_effect=_no_download):
        return LearnedPerceptualImagePatchSimilarity(net_type="alex", normalize=True)


def _cached(url: str, alternative: str = "") -> Path:
    """Where torch.hub keeps ``url``'s file; FileNotFoundError if it has not been downloaded."""
    path = Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name
    if not path.is_file():
        raise FileNotFoundError(
            f"no {path.name} in {path.parent}" + (f" ({alternative})" if alternative else "")
        )
    return path


def _no_download(url: str, *args: Any, **kwargs: Any) -> None:
    raise FileNotFoundError(f"{url} is not downloaded")
