"""TIFF outputs as archives keep them: every page, the scanner's tags, the EXIF directory.

tifffile writes the pages from the output arrays themselves (no copy of a 400-megapixel scan),
deflate-compressed, tagged sRGB, as BigTIFF past 4 GB. It writes plain tags, but not the EXIF
sub-directory a camera or scanner records dates and settings in (it refuses the ``ExifIFD``
pointer tag): that directory is appended after the pages here (serialised by Pillow's TIFF
directory writer), and a placeholder tag tifffile wrote, numbered one below ``ExifIFD`` so the
directory stays sorted, becomes the ``ExifIFD`` tag pointing at it.
"""

from __future__ import annotations

import contextlib
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
from PIL import Image, TiffImagePlugin

from colorizer.icc import srgb_profile

# A scanner's TIFF tags that describe the photo rather than its layout in the file.
TIFF_TAGS = {
    269: "DocumentName", 270: "ImageDescription", 271: "Make", 272: "Model",
    282: "XResolution", 283: "YResolution", 296: "ResolutionUnit", 305: "Software",
    306: "DateTime", 315: "Artist", 316: "HostComputer", 33432: "Copyright",
}  # fmt: skip
# tifffile writes a classic TIFF up to 4 GB; past that (with room for tags) it needs BigTIFF.
_CLASSIC_TIFF_BYTES = 2**32 - 2**25
_EXIF_IFD = 0x8769
_PLACEHOLDER = _EXIF_IFD - 1  # no tag has this number; no tag lies between it and ExifIFD
_LITTLE_ENDIAN_HEADER = b"II*\x00\x08\x00\x00\x00"


def write_tiff(
    pages: list[np.ndarray], path: Path, tags: Mapping[int, Any], exif: bytes | None = None
) -> None:
    """RGB pages ``[H, W, 3]`` (uint8 or uint16) -> one deflate-compressed TIFF page each, with
    the scanner's ``tags`` (``TIFF_TAGS``; the photo's ``exif`` gives those it lacks) and
    ``exif``'s EXIF directory on the first page (not in a BigTIFF)."""
    described = _exif_of(exif)
    tags = {**{tag: described[tag] for tag in TIFF_TAGS if tag in described}, **tags}
    resolution = (tags[282], tags[283]) if 282 in tags and 283 in tags else None
    unit = {1: "NONE", 2: "INCH", 3: "CENTIMETER"}.get(tags.get(296, 2), "INCH")
    text = [(tag, "s", 0, str(tags[tag]), True) for tag in TIFF_TAGS if tag in tags]
    text = [entry for entry in text if entry[0] not in (270, 282, 283, 296, 305, 306)]
    bigtiff = sum(page.nbytes for page in pages) > _CLASSIC_TIFF_BYTES
    directory = {} if bigtiff else dict(described.get_ifd(_EXIF_IFD))
    with tifffile.TiffWriter(path, bigtiff=bigtiff, byteorder="<") as tiff:
        for i, page in enumerate(pages):
            pointer = [(_PLACEHOLDER, "I", 1, 0, True)] if directory and i == 0 else []
            tiff.write(
                page, photometric="rgb", compression="zlib", metadata=None,
                iccprofile=srgb_profile(), description=tags.get(270), software=tags.get(305),
                datetime=tags.get(306), resolution=resolution,
                resolutionunit=unit if resolution else None, extratags=text + pointer,
            )  # fmt: skip
    if directory:
        _append_exif_directory(path, directory)


def _exif_of(exif: bytes | None) -> Image.Exif:
    described = Image.Exif()
    if exif:
        # Metadata is a courtesy: unreadable EXIF leaves the pixels written without it.
        with contextlib.suppress(OSError, ValueError, SyntaxError, struct.error):
            described.load(exif)
    return described


def _append_exif_directory(path: Path, directory: Mapping[int, Any]) -> None:
    """Append the EXIF ``directory`` to the little-endian TIFF ``path`` and turn its first
    page's placeholder tag into the ``ExifIFD`` tag pointing at it."""
    with tifffile.TiffFile(path) as tiff:
        placeholder = tiff.pages[0].tags[_PLACEHOLDER]
        entry_at, pointer_at = placeholder.offset, placeholder.valueoffset
    ifd = TiffImagePlugin.ImageFileDirectory_v2(ifh=_LITTLE_ENDIAN_HEADER)
    for tag, value in directory.items():
        ifd[tag] = value
    with path.open("r+b") as file:
        end = file.seek(0, 2)
        end += file.write(bytes(end % 2))  # directories start on a word boundary
        file.write(ifd.tobytes(end))
        file.seek(entry_at)
        file.write(struct.pack("<H", _EXIF_IFD))
        file.seek(pointer_at)
        file.write(struct.pack("<I", end))
