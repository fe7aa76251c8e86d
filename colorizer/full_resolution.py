"""A photo's own L merged with working-size chroma, strip by strip, at any size and depth.

A 400-megapixel scan held as float32 Lab planes would take 4.8 GB per copy, and a merge
makes several. Here every full-resolution float array covers one strip of rows
(``STRIP_PIXELS``): the strip's L is computed from the uint8 or uint16 photo, its chroma
rows are interpolated from the small prediction, and the merged colour is rounded into the
output. So memory grows with the strip, not the photo, and the result is the whole-image
merge's (``colorizer.inference.merge_full_resolution``) up to float rounding: the strips
compute the same bilinear weights the whole image would, so there are no seams.

Photos are sRGB ``[3, H, W]`` or gray ``[1, H, W]``, uint8 or uint16 (a 16-bit master's
tones: its L is computed from all 16 bits, and the output keeps that depth).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from colorizer.color import merge_lab, normalize_l, rgb_to_lab

# Pixels per strip: full-resolution float temporaries of the merge take ~100 bytes a pixel,
# so about 200 MB, whatever the photo's size.
STRIP_PIXELS = 1 << 21
_GRAY_TABLES: dict[tuple[torch.dtype, torch.device], torch.Tensor] = {}


def strip_rows(height: int, width: int, strip_pixels: int = STRIP_PIXELS) -> list[slice]:
    """The strips of rows an ``height x width`` photo is merged in, top to bottom."""
    rows = max(1, strip_pixels // max(1, width))
    return [slice(top, min(top + rows, height)) for top in range(0, height, rows)]


def gray_lightness_table(dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Normalised L of each level of a gray sRGB photo (R = G = B): float32 ``[256]`` for
    uint8, ``[65536]`` for uint16, in [-1, 1]."""
    key = (dtype, device)
    if key not in _GRAY_TABLES:
        if dtype == torch.uint8:  # the very values rgb_to_lab gives an RGB photo's pixels
            levels = torch.arange(256, dtype=torch.uint8).expand(1, 3, 1, 256)
        else:  # float64: L at 16-bit precision (adjacent levels differ by ~0.002 L)
            levels = (torch.arange(65536, dtype=torch.float64) / 65535).expand(1, 3, 1, 65536)
        lightness = rgb_to_lab(levels)[0, 0, 0]
        _GRAY_TABLES[key] = normalize_l(lightness).float().to(device)
    return _GRAY_TABLES[key]


def strip_lightness(photo: torch.Tensor, rows: slice, device: torch.device) -> torch.Tensor:
    """Normalised L ``[1, 1, n, W]`` float32 of ``photo``'s ``rows`` (``[C, H, W]``, module
    docstring), computed on ``device``."""
    strip = photo[:, rows].to(device)
    if photo.shape[0] == 3:
        if strip.dtype == torch.uint16:  # 16-bit colour: float32 keeps 1/65535 steps
            strip = strip.float().div_(65535.0)
        return normalize_l(rgb_to_lab(strip[None])[:, :1])
    table = gray_lightness_table(photo.dtype, device)
    return table[strip.long()][None]


def working_lightness(
    photo: torch.Tensor,
    shape: tuple[int, int],
    device: torch.device,
    strip_pixels: int = STRIP_PIXELS,
) -> torch.Tensor:
    """Normalised L ``[1, 1, h, w]`` of ``photo`` resized to ``shape`` (bilinear, antialiased),
    equal to resizing its whole L plane: the resize is separable, so each strip is resized
    across, and the ``[H, w]`` column they make is resized down."""
    height, width = photo.shape[-2:]
    across = [
        resize_planes(strip_lightness(photo, rows, device), (rows.stop - rows.start, shape[1]))
        for rows in strip_rows(height, width, strip_pixels)
    ]
    return resize_planes(torch.cat(across, dim=2), shape)


def chroma_rows(ab: torch.Tensor, rows: slice, shape: tuple[int, int]) -> torch.Tensor:
    """Rows ``rows`` of ``ab [1, 2, h, w]`` enlarged to ``shape`` (H >= h, W >= w), bilinear
    as ``F.interpolate`` (align_corners=False) enlarges it whole -> ``[1, 2, n, W]``."""
    height, small = shape[0], ab.shape[2]
    out_rows = torch.arange(rows.start, rows.stop, dtype=torch.float64, device=ab.device)
    source = ((out_rows + 0.5) * (small / height) - 0.5).clamp(min=0.0)
    first = source.floor().long().clamp(max=small - 1)
    second = (first + 1).clamp(max=small - 1)
    weight = (source - first).float()[None, None, :, None]
    between = ab[:, :, first] * (1 - weight) + ab[:, :, second] * weight
    # Height unchanged (scale 1 maps each row onto itself): only the width is interpolated.
    return F.interpolate(between, size=(between.shape[2], shape[1]), mode="bilinear")


def merge_in_strips(
    photo: torch.Tensor, ab: torch.Tensor, strip_pixels: int = STRIP_PIXELS
) -> torch.Tensor:
    """The photo's L (``[C, H, W]``) + normalised ab ``[1, 2, h, w]`` -> sRGB ``[3, H, W]`` on
    the CPU, uint16 for a uint16 photo, else uint8; out-of-gamut colours desaturated, so the
    L is kept. Stored as ``[H, W, 3]`` (the returned tensor is its permuted view): what image
    writers take, so writing needs no reordered copy."""
    height, width = photo.shape[-2:]
    top = 65535.0 if photo.dtype == torch.uint16 else 255.0
    out = torch.empty((height, width, 3), dtype=photo.dtype)
    enlarging = height >= ab.shape[2] and width >= ab.shape[3]
    # Shrinking (a photo smaller than a fixed-size network's input) must average, which
    # only a whole-plane antialiased resize does; such photos are small.
    ab_full = None if enlarging else resize_planes(ab, (height, width))
    for rows in strip_rows(height, width, strip_pixels):
        l_strip = strip_lightness(photo, rows, ab.device)
        ab_strip = (
            chroma_rows(ab, rows, (height, width)) if ab_full is None else ab_full[:, :, rows]
        )
        rgb = merge_lab(l_strip, ab_strip, keep_lightness=True)[0]
        out[rows] = rgb.mul_(top).round_().permute(1, 2, 0).to(photo.dtype).cpu()
    return out.permute(2, 0, 1)


def resize_planes(planes: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of ``[B, C, H, W]`` to ``shape``; antialiased, so a photo smaller than the
    network's working size gets each area's average (enlarging, the usual case for chroma, is
    unaffected)."""
    if tuple(planes.shape[-2:]) == shape:
        return planes
    return F.interpolate(planes, size=shape, mode="bilinear", antialias=True)
