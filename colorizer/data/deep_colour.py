"""16-bit colour files (RGB PNG and TIFF, as scanners save black-and-white prints too), which
Pillow decodes at 8 bits: recognised from the header Pillow has opened, decoded by OpenCV at
16 bits, turned upright and composited on white here (OpenCV's unchanged read does neither).
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from colorizer.icc import describes_srgb

_PNG_DEPTH_AND_TYPE = slice(24, 26)  # IHDR's bit depth and colour type
_PNG_COLOUR_TYPES = (2, 6)  # RGB, RGBA
_TIFF_RGB = 2  # PhotometricInterpretation
_ORIENTATION = 0x0112


def is_16_bit_colour(image: Image.Image, path: Path) -> bool:
    """Whether ``image`` (opened by Pillow from ``path``) holds 16-bit RGB(A) samples that this
    module can read in sRGB: with no ICC profile or an sRGB one (another profile is applied by
    LittleCMS, at 8 bits)."""
    if image.mode not in ("RGB", "RGBA") or not describes_srgb(image.info.get("icc_profile")):
        return False
    if image.format == "PNG":
        with path.open("rb") as file:
            header = file.read(26)[_PNG_DEPTH_AND_TYPE]
        return len(header) == 2 and header[0] == 16 and header[1] in _PNG_COLOUR_TYPES
    if image.format == "TIFF":
        tags = image.tag_v2
        bits = tags.get(258, ())
        return tags.get(262) == _TIFF_RGB and len(bits) >= 3 and all(b == 16 for b in bits)
    return False


def read_16_bit_colour(path: Path, page: int, orientation: int) -> np.ndarray:
    """Page ``page`` of ``path`` -> uint16 RGB ``[H, W, 3]``, EXIF ``orientation`` applied,
    alpha composited on white.

    Raises:
        ValueError: OpenCV could not decode it (truncated or corrupt).
    """
    flags = cv2.IMREAD_UNCHANGED
    if page:
        ok, pages = cv2.imreadmulti(str(path), start=page, count=1, flags=flags)
        pixels = pages[0] if ok and pages else None
    else:
        pixels = cv2.imread(str(path), flags)
    if pixels is None or pixels.dtype != np.uint16 or pixels.ndim != 3:
        raise ValueError(f"OpenCV could not decode {path.name} at 16 bits")
    rgb = pixels[..., 2::-1]  # BGR(A) -> RGB
    if pixels.shape[2] == 4:
        alpha = pixels[..., 3:].astype(np.float32) / 65535
        white = 65535 * (1 - alpha)
        rgb = np.rint(rgb * alpha + white).astype(np.uint16)
    return np.ascontiguousarray(_upright(rgb, orientation))


def _upright(pixels: np.ndarray, orientation: int) -> np.ndarray:
    """``[H, W, C]`` turned as EXIF orientation 1-8 says (Pillow's ``exif_transpose``)."""
    turns = {
        2: lambda a: a[:, ::-1],
        3: lambda a: a[::-1, ::-1],
        4: lambda a: a[::-1],
        5: lambda a: a.transpose(1, 0, 2),
        6: lambda a: np.rot90(a, -1),
        7: lambda a: a[::-1, ::-1].transpose(1, 0, 2),
        8: lambda a: np.rot90(a, 1),
    }
    return turns[orientation](pixels) if orientation in turns else pixels


def orientation_of(image: Image.Image) -> int:
    """The EXIF orientation of an opened image (1: as stored)."""
    try:
        return int(image.getexif().get(_ORIENTATION, 1))
    except (OSError, ValueError, TypeError, SyntaxError):
        return 1
