import math

import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity
from torchmetrics import Metric

from colorizer.metrics import (
    colorization_metrics,
    colourfulness,
    computed_or_nan,
    psnr_per_image,
    update_metrics,
)


def _batches(seed: int = 0, size: int = 32):
    """Two batches of (prediction, truth) float images in [0, 1] of different difficulty."""
    generator = torch.Generator().manual_seed(seed)
    truth = torch.rand(6, 3, size, size, generator=generator)
    noise = torch.randn(6, 3, size, size, generator=generator)
    scale = torch.tensor([0.01, 0.02, 0.05, 0.1, 0.2, 0.3])[:, None, None, None]
    prediction = (truth + scale * noise).clamp(0, 1)
    return [(prediction[:4], truth[:4]), (prediction[4:], truth[4:])]


def _numpy_colourfulness(image: np.ndarray) -> float:
    """Hasler & Süsstrunk (2003), written independently: image [3, H, W] in [0, 255]."""
    red, green, blue = image.astype(np.float64)
    rg = red - green
    yb = 0.5 * (red + green) - blue
    std_root = np.sqrt(np.std(rg) ** 2 + np.std(yb) ** 2)
    mean_root = np.sqrt(np.mean(rg) ** 2 + np.mean(yb) ** 2)
    return std_root + 0.3 * mean_root


@pytest.fixture
def results():
    metrics = colorization_metrics().clone(prefix="test/")
    for prediction, truth in _batches():
        metrics.update(prediction, truth)
    return {key: float(value) for key, value in metrics.compute().items()}


def _all_images():
    pairs = _batches()
    return torch.cat([p for p, _ in pairs]).numpy(), torch.cat([t for _, t in pairs]).numpy()


def test_keys_carry_the_stage_prefix(results):
    assert set(results) == {"test/psnr", "test/mse", "test/ssim", "test/cf", "test/delta_cf"}


def test_psnr_is_per_image_then_averaged(results):
    predictions, truths = _all_images()
    per_image = [
        peak_signal_noise_ratio(t, p, data_range=1.0)
        for p, t in zip(predictions, truths, strict=True)
    ]
    assert results["test/psnr"] == pytest.approx(np.mean(per_image), abs=1e-4)
    pooled = 10 * np.log10(1.0 / np.mean((predictions - truths) ** 2))
    assert abs(results["test/psnr"] - pooled) > 1.0  # the pooled definition would differ


def test_mse_is_over_all_pixels_on_unit_scale(results):
    predictions, truths = _all_images()
    assert results["test/mse"] == pytest.approx(np.mean((predictions - truths) ** 2), rel=1e-5)


def test_ssim_matches_skimage():
    """A Gaussian window of sigma 1.5, population covariances, averaged over images. On 128 px
    images the border handling, which differs, moves it by 3e-4; a window of sigma 1.0 or
    2.0, or a uniform one, by 1.2e-3 or more."""
    pairs = _batches(size=128)
    metrics = colorization_metrics()
    for prediction, truth in pairs:
        metrics.update(prediction, truth)
    predictions, truths = (torch.cat(images).numpy() for images in zip(*pairs, strict=True))
    expected = np.mean(
        [
            structural_similarity(
                t,
                p,
                channel_axis=0,
                data_range=1.0,
                gaussian_weights=True,
                sigma=1.5,
                use_sample_covariance=False,
            )
            for p, t in zip(predictions, truths, strict=True)
        ]
    )
    assert float(metrics.compute()["ssim"]) == pytest.approx(expected, abs=7e-4)


def test_the_shares_of_several_processes_combine_into_the_metrics_of_all_images():
    """Under DDP each process scores its share of the images and the states are gathered
    across processes: two shares give the metrics of all the images. (Two processes are
    simulated: each state's gather returns this share's value and the other's.)"""
    pairs = _batches()
    every_image = colorization_metrics()
    for prediction, truth in pairs:
        every_image.update(prediction, truth)
    shares = [colorization_metrics() for _ in pairs]
    for share, (prediction, truth) in zip(shares, pairs, strict=True):
        share.update(prediction, truth)
    for name, metric in shares[0].items():
        others = iter(shares[1][name].metric_state.values())  # in the order they are gathered
        metric.dist_sync_fn = lambda own, group=None, others=others: [own, next(others)]
        metric.distributed_available_fn = lambda: True
    combined, expected = shares[0].compute(), every_image.compute()
    for key, value in expected.items():
        torch.testing.assert_close(combined[key], value, msg=lambda m, k=key: f"{k}: {m}")


def test_one_image_is_scored_as_itself():
    """A split of one image: each mean is that image's score, not a fraction of it."""
    prediction, truth = (images[:1] for images in _batches()[0])
    metrics = colorization_metrics()
    metrics.update(prediction, truth)
    scores = metrics.compute()
    assert float(scores["psnr"]) == pytest.approx(float(psnr_per_image(prediction, truth)[0]))
    assert float(scores["cf"]) == pytest.approx(float(colourfulness(prediction)[0]))
    expected_gap = abs(float(colourfulness(prediction)[0] - colourfulness(truth)[0]))
    assert float(scores["delta_cf"]) == pytest.approx(expected_gap, rel=1e-5)


class NeedsTwoImages(Metric):
    """Refuses to compute from fewer than two images, as FID does."""

    def __init__(self) -> None:
        super().__init__()
        self.add_state("count", default=torch.tensor(0), dist_reduce_fx="sum")

    def update(self, images: torch.Tensor) -> None:
        self.count += images.shape[0]

    def compute(self) -> torch.Tensor:
        if self.count < 2:
            raise RuntimeError("More than one sample is required")
        return self.count.float()


def test_a_metric_that_cannot_be_computed_is_nan_in_reports():
    metric = NeedsTwoImages()
    metric.update(torch.zeros(1, 3, 4, 4))
    assert math.isnan(computed_or_nan(metric))
    metric.update(torch.zeros(1, 3, 4, 4))
    assert computed_or_nan(metric) == 2.0


def test_colourfulness_and_gap(results):
    predictions, truths = _all_images()
    cf_pred = [_numpy_colourfulness(255 * p) for p in predictions]
    cf_truth = [_numpy_colourfulness(255 * t) for t in truths]
    assert results["test/cf"] == pytest.approx(np.mean(cf_pred), rel=1e-5)
    assert results["test/delta_cf"] == pytest.approx(
        abs(np.mean(cf_pred) - np.mean(cf_truth)), abs=1e-3
    )


def test_colourfulness_reference_values():
    gray = torch.full((1, 3, 4, 4), 0.5)
    red = torch.zeros(1, 3, 4, 4)
    red[:, 0] = 1.0
    # pure red: rg = 255, yb = 127.5, no spread -> 0.3 * sqrt(255^2 + 127.5^2)
    expected_red = 0.3 * np.hypot(255.0, 127.5)
    torch.testing.assert_close(
        colourfulness(torch.cat([gray, red])),
        torch.tensor([0.0, float(expected_red)]),
        atol=1e-3,
        rtol=0,
    )


def test_perfect_prediction_is_finite():
    metrics = colorization_metrics()
    truth = torch.rand(2, 3, 16, 16)
    metrics.update(truth, truth)
    values = metrics.compute()
    assert values["psnr"] == pytest.approx(100.0)  # capped, not inf
    assert values["mse"] == 0 and values["delta_cf"] == 0


def test_clones_per_stage_are_independent():
    base = colorization_metrics()
    val, test = base.clone(prefix="val/"), base.clone(prefix="test/")
    prediction, truth = _batches()[0]
    val.update(prediction, truth)
    val.compute()
    with pytest.warns(UserWarning, match="compute"):
        assert float(test.compute()["test/psnr"]) == 0.0  # nothing seen: untouched by val


def test_metrics_are_exact_under_bf16_autocast():
    # A smooth image (like sky in a photograph): bf16 convolutions would wreck SSIM here.
    generator = torch.Generator().manual_seed(3)
    ramp = torch.linspace(0.3, 0.7, 96).view(1, 1, 96, 1).expand(4, 3, 96, 96)
    truth = (ramp + 0.01 * torch.randn(4, 3, 96, 96, generator=generator)).clamp(0, 1)
    prediction = (truth + 0.01 * torch.randn(4, 3, 96, 96, generator=generator)).clamp(0, 1)
    reference = colorization_metrics()
    update_metrics(reference, prediction, truth)
    under_autocast = colorization_metrics()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        update_metrics(under_autocast, prediction, truth)
    expected, actual = reference.compute(), under_autocast.compute()
    for key in expected:
        torch.testing.assert_close(actual[key], expected[key], msg=key)
    assert expected["ssim"] > 0.85


def _round_to_tf32(tensor: torch.Tensor) -> torch.Tensor:
    """float32 rounded to TF32's 10 mantissa bits (to nearest), as tensor cores read it."""
    if tensor.dtype != torch.float32:
        return tensor
    bits = tensor.contiguous().view(torch.int32)
    return ((bits + 0x1000) & ~0x1FFF).view(torch.float32)


@pytest.mark.parametrize("setting", ["tf32", "bf16"])
def test_metrics_are_exact_whatever_the_float32_precision_setting(monkeypatch, setting):
    """GPUs from Ampere on run float32 convolutions in TF32 by default (cuDNN's
    ``fp32_precision`` is "tf32"); users may choose TF32 or bf16 for oneDNN too. Emulate the
    setting on the CPU by rounding the operands of every float32 convolution to TF32 while the
    setting asks for reduced precision: the metrics must not move."""
    from skimage import data
    from torchvision.transforms.functional import resize

    from colorizer.color import gray_baseline, split_lab

    photos = torch.stack(
        [resize(torch.from_numpy(p()).permute(2, 0, 1), [128, 128]) for p in (data.coffee,
         data.chelsea, data.astronaut)]
    )  # fmt: skip
    truth = photos.float() / 255.0
    gray = gray_baseline(split_lab(photos)[0])

    def scores() -> dict[str, float]:
        metrics = colorization_metrics()
        update_metrics(metrics, gray, truth)
        return {key: float(value) for key, value in metrics.compute().items()}

    exact = scores()
    conv2d = torch.nn.functional.conv2d

    def reduced_precision_conv2d(x, weight, *args, **kwargs):
        if torch.backends.mkldnn.conv.fp32_precision in ("tf32", "bf16"):
            x, weight = _round_to_tf32(x), _round_to_tf32(weight)
        return conv2d(x, weight, *args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "conv2d", reduced_precision_conv2d)
    before = torch.backends.mkldnn.conv.fp32_precision
    torch.backends.mkldnn.conv.fp32_precision = setting
    try:
        reduced = scores()
        assert torch.backends.mkldnn.conv.fp32_precision == setting  # the user's, kept
    finally:
        torch.backends.mkldnn.conv.fp32_precision = before
    for key, value in exact.items():
        assert reduced[key] == pytest.approx(value, rel=1e-6, abs=1e-7), key
    assert 0.5 < exact["ssim"] < 0.99
