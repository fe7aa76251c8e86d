"""Colour profiles (ICC): photos are read into sRGB, whatever profile they embed, and written
tagged as the sRGB they are.

A scan with a Gray Gamma 2.2 or Dot Gain 20 % profile stores other tones than an sRGB one at
the same levels (Dot Gain 20 %: a mid-gray level is 8 L units darker), and an Adobe RGB
photo other colours; read as sRGB, their L would be wrong. RGB and CMYK pixels are converted by
LittleCMS (Pillow's ImageCms, relative colorimetric). A gray profile is only a tone curve
(``kTRC``: level -> luminance Y), so gray photos are converted here, level by level, to sRGB
gray at 16 bits: an 8-bit scan's tones are not rounded twice.
"""

from __future__ import annotations

import logging
import struct
from functools import cache
from io import BytesIO

import numpy as np
from PIL import Image, ImageCms

log = logging.getLogger(__name__)

_PROFILE_ERRORS = (OSError, ValueError, struct.error, ImageCms.PyCMSError)


@cache
def srgb_profile() -> bytes:
    """The ICC profile written into every output: LittleCMS's built-in sRGB (588 bytes), its
    creation date and profile ID zeroed (ICC: "not computed"), so outputs do not change with
    the day they were written."""
    icc = bytearray(ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes())
    icc[24:36] = bytes(12)
    icc[84:100] = bytes(16)
    return bytes(icc)


def describes_srgb(icc: bytes | None) -> bool:
    """Whether an embedded profile (None: there is none) leaves the pixels as sRGB: none, or
    one whose description says sRGB. An unreadable one counts as not (it is for
    :func:`to_srgb` to report)."""
    if not icc:
        return True
    try:
        profile = ImageCms.ImageCmsProfile(BytesIO(icc))
        return "srgb" in ImageCms.getProfileDescription(profile).lower()
    except _PROFILE_ERRORS:
        return False


def to_srgb(image: Image.Image, name: object = "") -> Image.Image:
    """A loaded image with its embedded profile applied: RGB (``RGB``, ``RGBA``, ``CMYK``)
    converted to sRGB, gray (``L``, ``I;16``) to sRGB gray as ``I;16``; ``image`` itself when
    it has no profile, an sRGB one, or one that does not fit its mode. An unreadable profile is
    ignored with a warning naming ``name``: the pixels are still usable, read as sRGB."""
    icc = image.info.get("icc_profile")
    if not icc:
        return image
    try:
        profile = ImageCms.ImageCmsProfile(BytesIO(icc))
        if "srgb" in ImageCms.getProfileDescription(profile).lower():
            return image
        space = profile.profile.xcolor_space.strip()
        if space == "GRAY" and (image.mode == "L" or image.mode.startswith("I;16")):
            return _gray_to_srgb(image, icc)
        if (space, image.mode) in {("RGB", "RGB"), ("RGB", "RGBA"), ("CMYK", "CMYK")}:
            return _colour_to_srgb(image, profile)
    except _PROFILE_ERRORS as error:
        log.warning("%s: unreadable ICC profile (%s), read as sRGB", name, error)
    return image


def _colour_to_srgb(image: Image.Image, profile: ImageCms.ImageCmsProfile) -> Image.Image:
    alpha = image.getchannel("A") if image.mode == "RGBA" else None
    pixels = image.convert("RGB") if alpha is not None else image
    srgb = ImageCms.ImageCmsProfile(BytesIO(srgb_profile()))
    converted = ImageCms.profileToProfile(
        pixels, profile, srgb, renderingIntent=ImageCms.Intent.RELATIVE_COLORIMETRIC,
        outputMode="RGB",
    )  # fmt: skip
    if alpha is not None:
        converted.putalpha(alpha)
    return converted


def _gray_to_srgb(image: Image.Image, icc: bytes) -> Image.Image:
    levels = 256 if image.mode == "L" else 65536
    table = srgb_gray_levels(icc, levels)
    return Image.fromarray(table[np.asarray(image).astype(np.int64)])  # uint16: mode I;16


def srgb_gray_levels(icc: bytes, levels: int) -> np.ndarray:
    """For each of ``levels`` gray levels of a gray profile's photo, the 16-bit sRGB gray of the
    same luminance: uint16 ``[levels]``."""
    luminance = gray_luminance(icc, np.arange(levels) / (levels - 1))
    linear = np.clip(luminance, 0.0, 1.0)
    encoded = np.where(
        linear <= 0.0031308, 12.92 * linear, 1.055 * np.power(linear, 1 / 2.4) - 0.055
    )
    return np.rint(encoded * 65535).astype(np.uint16)


def gray_luminance(icc: bytes, values: np.ndarray) -> np.ndarray:
    """Relative luminance Y of gray values in [0, 1] under a gray profile's tone curve
    (``kTRC``: a ``curv`` gamma or table, or a ``para`` function, ICC.1 10.6 and 10.18)."""
    offset = _tag_offset(icc, b"kTRC")
    kind = icc[offset : offset + 4]
    if kind == b"curv":
        (count,) = struct.unpack_from(">I", icc, offset + 8)
        if count == 0:
            return values.astype(np.float64)
        if count == 1:
            (gamma,) = struct.unpack_from(">H", icc, offset + 12)
            return np.power(values, gamma / 256)
        table = np.array(struct.unpack_from(f">{count}H", icc, offset + 12)) / 65535
        return np.interp(values, np.linspace(0.0, 1.0, count), table)
    if kind == b"para":
        (function,) = struct.unpack_from(">H", icc, offset + 8)
        if function > 4:
            raise ValueError(f"unknown parametric curve type {function}")
        count = (1, 3, 4, 5, 7)[function]
        raw = struct.unpack_from(f">{count}i", icc, offset + 12)
        return _parametric(function, [value / 65536 for value in raw], values)
    raise ValueError(f"gray tone curve of unknown type {kind!r}")


def _parametric(function: int, params: list[float], x: np.ndarray) -> np.ndarray:
    g, a, b, c, d, e, f = params + [1.0, 0.0, 0.0, 0.0, 0.0, 0.0][: 7 - len(params)]
    if function == 0:
        return np.power(x, g)
    power = np.power(np.clip(a * x + b, 0.0, None), g)
    if function == 1:
        return np.where(x >= -b / a, power, 0.0)
    if function == 2:
        return np.where(x >= -b / a, power + c, c)
    if function == 3:
        return np.where(x >= d, power, c * x)
    return np.where(x >= d, power + e, c * x + f)


def _tag_offset(icc: bytes, signature: bytes) -> int:
    (count,) = struct.unpack_from(">I", icc, 128)
    for i in range(count):
        tag, offset, _ = struct.unpack_from(">4sII", icc, 132 + 12 * i)
        if tag == signature:
            return offset
    raise ValueError(f"no {signature.decode()} tag")
