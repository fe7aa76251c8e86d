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
from functools import cache, lru_cache
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
        return _read_profile(icc)[2]
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
        _, space, srgb = _read_profile(icc)
        if srgb:
            return image
        if space == "GRAY" and (image.mode == "L" or image.mode.startswith("I;16")):
            return _gray_to_srgb(image, icc)
        if (space, image.mode) in {("RGB", "RGB"), ("RGB", "RGBA"), ("CMYK", "CMYK")}:
            return _colour_to_srgb(image, icc)
    except _PROFILE_ERRORS as error:
        log.warning("%s: unreadable ICC profile (%s), read as sRGB", name, error)
    return image


# Photos of one camera or scanner share a profile: parsing it, and LittleCMS's transform, are
# done once per profile, not once per photo (a training set decodes each photo many times).
@lru_cache(maxsize=32)
def _read_profile(icc: bytes) -> tuple[ImageCms.ImageCmsProfile, str, bool]:
    """(the profile, its colour space: ``RGB``, ``GRAY``, ``CMYK``..., whether it says sRGB)."""
    profile = ImageCms.ImageCmsProfile(BytesIO(icc))
    srgb = "srgb" in ImageCms.getProfileDescription(profile).lower()
    return profile, profile.profile.xcolor_space.strip(), srgb


@lru_cache(maxsize=32)
def _transform_to_srgb(icc: bytes, mode: str) -> ImageCms.ImageCmsTransform:
    srgb = ImageCms.ImageCmsProfile(BytesIO(srgb_profile()))
    # NOCACHE: LittleCMS's one-pixel cache would be shared by the threads that use this
    # transform at once (the scan decodes in a thread pool); without it a transform is reentrant.
    return ImageCms.buildTransform(
        _read_profile(icc)[0], srgb, mode, "RGB", ImageCms.Intent.RELATIVE_COLORIMETRIC,
        flags=ImageCms.Flags.NOCACHE,
    )  # fmt: skip


def _colour_to_srgb(image: Image.Image, icc: bytes) -> Image.Image:
    alpha = image.getchannel("A") if image.mode == "RGBA" else None
    pixels = image.convert("RGB") if alpha is not None else image
    converted = ImageCms.applyTransform(pixels, _transform_to_srgb(icc, pixels.mode))
    if alpha is not None:
        converted.putalpha(alpha)
    return converted


def _gray_to_srgb(image: Image.Image, icc: bytes) -> Image.Image:
    levels = 256 if image.mode == "L" else 65536
    table = srgb_gray_levels(icc, levels)
    return Image.fromarray(table[np.asarray(image).astype(np.int64)])  # uint16: mode I;16


@lru_cache(maxsize=32)
def srgb_gray_levels(icc: bytes, levels: int) -> np.ndarray:
    """For each of ``levels`` gray levels of a gray profile's photo, the 16-bit sRGB gray of the
    same luminance: uint16 ``[levels]``."""
    luminance = gray_luminance(icc, np.arange(levels) / (levels - 1))
    linear = np.clip(luminance, 0.0, 1.0)
    encoded = np.where(
        linear <= 0.0031308, 12.92 * linear, 1.055 * np.power(linear, 1 / 2.4) - 0.055
    )
    table = np.rint(encoded * 65535).astype(np.uint16)
    table.setflags(write=False)  # shared by every photo with this profile
    return table


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
