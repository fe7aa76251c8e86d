"""CIE Lab conversion and the network's normalisation: the only place these constants live.

Images travel through the data pipeline as uint8 sRGB ``[B, 3, H, W]``. Everything here runs
batch-wise on whatever device the batch is on, in float32 with autocast disabled: Lab involves
a cube root and a 2.4 power that bf16 cannot represent accurately enough (an L error of several
units is visible), so the conversion must never be left to mixed precision.

Conventions (CIE Lab, D65 white point, sRGB primaries, via kornia):

- ``L`` in [0, 100] is fed to the network as ``L / 50 - 1`` in [-1, 1].
- ``a``, ``b`` in roughly [-110, 110] for in-gamut sRGB colours are the target as ``ab / 110``,
  so a ``tanh`` output can reach every in-gamut colour.
"""

from __future__ import annotations

import kornia.color
import torch

L_SCALE = 50.0
"""Half the L range: ``L / 50 - 1`` maps [0, 100] to [-1, 1]."""

AB_SCALE = 110.0
"""Bound of |a|, |b| over the sRGB gamut (max |b| ~ 108): ``ab / 110`` lies within [-1, 1]."""


def _float_no_autocast(images: torch.Tensor) -> torch.Tensor:
    """uint8 -> float32 in [0, 1]; half/bf16 -> float32; float32/float64 unchanged."""
    if images.dtype == torch.uint8:
        return images.float().div_(255.0)
    if images.dtype in (torch.float16, torch.bfloat16):
        return images.float()
    return images


def rgb_to_lab(rgb: torch.Tensor) -> torch.Tensor:
    """sRGB ``[B, 3, H, W]`` (uint8, or float in [0, 1]) -> Lab float32 ``[B, 3, H, W]``.

    L in [0, 100], a and b in about [-110, 110]. float64 input stays float64 (for gradcheck).
    uint8 input, every batch of the data pipeline, takes a faster route to the same values
    (``_uint8_rgb_to_lab``); float input goes through kornia.
    """
    with torch.autocast(device_type=rgb.device.type, enabled=False):
        if rgb.dtype == torch.uint8:
            return _uint8_rgb_to_lab(rgb)
        return kornia.color.rgb_to_lab(_float_no_autocast(rgb))


# kornia's sRGB -> XYZ matrix, each row divided by the D65 white point's X, Y, Z.
_XYZ_OVER_WHITE = torch.tensor(
    [[0.412453, 0.357580, 0.180423], [0.212671, 0.715160, 0.072169],
     [0.019334, 0.119193, 0.950227]], dtype=torch.float64,
) / torch.tensor([[0.95047], [1.0], [1.08883]], dtype=torch.float64)  # fmt: skip
_LAB_EPSILON = 0.008856  # (6/29)^3: below it, CIE's f(t) is linear
_LINE_OFFSET = 4 / 29 - _LAB_EPSILON ** (1 / 3)  # f's line, 7.787 t + 4/29, less cbrt(eps)
_LINEAR_TABLES: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}


def _uint8_tables(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(sRGB level -> linear value ``[256]``, XYZ matrix ``[3, 3]``), float32 on ``device``."""
    if device not in _LINEAR_TABLES:
        levels = torch.arange(256, dtype=torch.float64) / 255.0
        linear = torch.where(levels > 0.04045, ((levels + 0.055) / 1.055) ** 2.4, levels / 12.92)
        _LINEAR_TABLES[device] = (linear.float().to(device), _XYZ_OVER_WHITE.float().to(device))
    return _LINEAR_TABLES[device]


def _uint8_rgb_to_lab(rgb: torch.Tensor) -> torch.Tensor:
    """kornia's sRGB -> Lab for uint8 input, ~2x faster on a CPU (equal within 1e-4).

    The sRGB decoding curve (a 2.4 power) has only 256 possible inputs: a table lookup
    replaces it. CIE's f(t) (a cube root above ``_LAB_EPSILON``, a line below it) is computed
    without a mask: ``cbrt(max(t, eps)) + min(7.787 t + 4/29 - cbrt(eps), 0)``. Above eps the
    second term is 0 (the line lies above the concave cube root, and they meet at eps), below
    it the first is the constant cbrt(eps) that the second cancels, leaving the line.
    """
    table, matrix = _uint8_tables(rgb.device)
    linear = table.index_select(0, rgb.reshape(-1).int()).view(rgb.shape)
    xyz = linear_rgb_to_xyz(linear, matrix)
    f = xyz.clamp(min=_LAB_EPSILON).pow_(1 / 3)
    f.add_(xyz.mul_(7.787).add_(_LINE_OFFSET).clamp_(max=0.0))
    fx, fy, fz = f.unbind(1)
    lab = torch.empty_like(f)
    torch.mul(fy, 116.0, out=lab[:, 0]).sub_(16.0)
    torch.sub(fx, fy, out=lab[:, 1]).mul_(500.0)
    torch.sub(fy, fz, out=lab[:, 2]).mul_(200.0)
    return lab


def linear_rgb_to_xyz(
    linear: torch.Tensor, matrix: torch.Tensor, elementwise: bool | None = None
) -> torch.Tensor:
    """``matrix [3, 3] @`` each pixel of ``linear [B, 3, H, W]``, in true float32.

    On a CPU a matmul (einsum) is fastest. On a GPU a matmul or a convolution may run in TF32
    (10-bit mantissas: ~0.1 L units of error) when the user allows it, e.g. with
    ``torch.set_float32_matmul_precision("high")`` as Lightning suggests; there, elementwise
    products and a sum, nearly free on a GPU, stay float32 whatever the setting.
    ``elementwise``: None chooses by device.
    """
    if elementwise is None:
        elementwise = linear.device.type != "cpu"
    if elementwise:
        return (matrix[None, :, :, None, None] * linear[:, None]).sum(dim=2)
    return torch.einsum("ij,bjhw->bihw", matrix, linear)


def lab_to_rgb(lab: torch.Tensor) -> torch.Tensor:
    """Lab ``[B, 3, H, W]`` -> sRGB float ``[B, 3, H, W]`` clipped to [0, 1]."""
    with torch.autocast(device_type=lab.device.type, enabled=False):
        return kornia.color.lab_to_rgb(_float_no_autocast(lab), clip=True)


def normalize_l(lightness: torch.Tensor) -> torch.Tensor:
    """L in [0, 100] -> network input in [-1, 1]."""
    return lightness / L_SCALE - 1.0


def denormalize_l(l_norm: torch.Tensor) -> torch.Tensor:
    """Network input in [-1, 1] -> L in [0, 100]."""
    return (l_norm + 1.0) * L_SCALE


def normalize_ab(ab: torch.Tensor) -> torch.Tensor:
    """ab in about [-110, 110] -> target in [-1, 1]."""
    return ab / AB_SCALE


def denormalize_ab(ab_norm: torch.Tensor) -> torch.Tensor:
    """Network output in [-1, 1] -> ab."""
    return ab_norm * AB_SCALE


def split_lab(rgb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """sRGB ``[B, 3, H, W]`` -> (normalised L ``[B, 1, H, W]``, normalised ab ``[B, 2, H, W]``)."""
    lab = rgb_to_lab(rgb)
    return normalize_l(lab[:, :1]), normalize_ab(lab[:, 1:])


def lab_to_rgb_keep_lightness(lab: torch.Tensor, steps: int = 10) -> torch.Tensor:
    """Lab ``[B, 3, H, W]`` -> sRGB in [0, 1], desaturating out-of-gamut colours instead of
    clipping them, so every pixel keeps its L.

    Clipping R, G, B separately changes a saturated pixel's lightness (by up to ~10 L units on
    an untrained network's output). Here each out-of-gamut pixel's ab is scaled by the largest
    factor in [0, 1] that brings it into the sRGB gamut: bracketed by bisection to 2^-steps,
    then placed where the gamut's surface crosses the bracket (``_surface_factor``); ab = 0 is
    always inside, so the search cannot fail. Only those pixels are searched.
    """
    with torch.autocast(device_type=lab.device.type, enabled=False):
        lab = _float_no_autocast(lab)
        rgb = kornia.color.lab_to_rgb(lab, clip=False)
        outside = _outside_gamut(rgb)
        if outside.any():
            pixels = lab.permute(0, 2, 3, 1)[outside]  # [N, 3]
            low = torch.zeros_like(pixels[:, :1])  # a factor known to be inside the gamut
            high = torch.ones_like(low)
            for _ in range(steps):
                middle = (low + high) / 2
                inside = ~_outside_gamut(_pixels_to_rgb(pixels, middle))[:, None]
                low, high = torch.where(inside, middle, low), torch.where(inside, high, middle)
            factor = _surface_factor(pixels, low, high)
            rgb.permute(0, 2, 3, 1)[outside] = _pixels_to_rgb(pixels, factor)
        return rgb.clamp_(0.0, 1.0)


def _surface_factor(pixels: torch.Tensor, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """The chroma factor ``[N, 1]`` at which Lab pixels ``[N, 3]`` meet the gamut's surface,
    between a factor inside (``low``) and one outside (``high``): each channel that leaves
    [0, 1] in that bracket is interpolated linearly to where it crosses, and the first
    crossing is taken.

    Bisection alone returns ``low``, a step function of the input: a float-rounding change of
    the chroma (the same photo merged whole or in strips) could move the result by a whole
    2^-steps of the chroma, up to three 8-bit levels. The crossing moves with the input, so
    such changes stay float rounding.
    """
    below = _channel_excess(_pixels_to_rgb(pixels, low))
    above = _channel_excess(_pixels_to_rgb(pixels, high))
    leaving = (above > 0) & (above > below)
    crossing = low - below * (high - low) / torch.where(leaving, above - below, 1.0)
    crossing = torch.where(leaving, crossing, high)
    return crossing.amin(dim=1, keepdim=True).clamp(min=0.0).minimum(high)


def _channel_excess(rgb: torch.Tensor) -> torch.Tensor:
    """How far each channel of sRGB pixels ``[N, 3]`` lies outside [0, 1] (negative: inside)."""
    return torch.maximum(rgb - 1.0, -rgb)


_GAMUT_SLACK = 1e-4  # float error of the Lab round trip; a tenth of an 8-bit level is below it


def _outside_gamut(rgb: torch.Tensor) -> torch.Tensor:
    """Per pixel: is any channel of ``[N, 3, ...]`` outside [0, 1]? -> ``[N, ...]``."""
    return ((rgb < -_GAMUT_SLACK) | (rgb > 1 + _GAMUT_SLACK)).any(dim=1)


def _pixels_to_rgb(pixels: torch.Tensor, chroma_factor: torch.Tensor) -> torch.Tensor:
    """Lab pixels ``[N, 3]`` with ab scaled by ``[N, 1]`` -> unclipped sRGB ``[N, 3]``."""
    scaled = torch.cat([pixels[:, :1], pixels[:, 1:] * chroma_factor], dim=1)
    return kornia.color.lab_to_rgb(scaled[:, :, None, None], clip=False)[:, :, 0, 0]


def merge_lab(
    l_norm: torch.Tensor, ab_norm: torch.Tensor, keep_lightness: bool = False
) -> torch.Tensor:
    """Normalised L ``[B, 1, H, W]`` + normalised ab ``[B, 2, H, W]`` -> sRGB in [0, 1].

    This is the reconstruction every metric uses: the true L with predicted ab, clipped to the
    sRGB gamut (README, Metrics). ``keep_lightness`` desaturates out-of-gamut colours instead
    (``lab_to_rgb_keep_lightness``), as photos colorized for people are.
    """
    with torch.autocast(device_type=l_norm.device.type, enabled=False):
        lab = torch.cat([denormalize_l(l_norm.float()), denormalize_ab(ab_norm.float())], dim=1)
        return lab_to_rgb_keep_lightness(lab) if keep_lightness else lab_to_rgb(lab)


def gray_baseline(l_norm: torch.Tensor) -> torch.Tensor:
    """The colourless prediction (ab = 0) for normalised L ``[B, 1, H, W]``: sRGB in [0, 1]."""
    zeros = torch.zeros_like(l_norm).expand(-1, 2, -1, -1)
    return merge_lab(l_norm, zeros)


def luminance_of(images: torch.Tensor) -> torch.Tensor:
    """Normalised L ``[B, 1, H, W]`` of float images in [0, 1], grayscale (C=1) or RGB (C=3).

    A one-channel image is read as a gray sRGB image (R = G = B), so its L is exact.
    """
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"expected images [B, 1 or 3, H, W], got shape {tuple(images.shape)}")
    if images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1)
    return normalize_l(rgb_to_lab(images.clamp(0.0, 1.0))[:, :1])
