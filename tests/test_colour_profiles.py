"""Colour management (issue 29, item 4): embedded ICC profiles (Gray Gamma 2.2, Dot Gain 20 %,
Adobe RGB) are honoured when reading, and outputs say they are sRGB. The profiles are built
here (Pillow makes only sRGB, Lab and XYZ ones) and checked against LittleCMS."""

from __future__ import annotations

import struct
from io import BytesIO
from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile
import torch
from PIL import Image, ImageCms
from skimage.color import rgb2lab

from colorizer.data.images import load_photo, load_rgb
from colorizer.icc import gray_luminance, srgb_gray_levels, srgb_profile
from colorizer.photo_files import write_image
from tests.helpers import colourful

D50 = (0.9642, 1.0, 0.8249)
# Adobe RGB (1998) primaries adapted to D50, as its published profile holds them.
ADOBE_PRIMARIES = {
    b"rXYZ": (0.60974, 0.31111, 0.01947),
    b"gXYZ": (0.20528, 0.62567, 0.06087),
    b"bXYZ": (0.14919, 0.06322, 0.74457),
}


def _xyz(values: tuple[float, float, float]) -> bytes:
    return b"XYZ " + bytes(4) + struct.pack(">3i", *(round(v * 65536) for v in values))


def _description(text: str) -> bytes:
    ascii_text = text.encode() + b"\0"
    return b"desc" + bytes(4) + struct.pack(">I", len(ascii_text)) + ascii_text + bytes(79)


def gamma_curve(gamma: float) -> bytes:
    return b"curv" + bytes(4) + struct.pack(">IH", 1, round(gamma * 256))


def table_curve(luminance: np.ndarray) -> bytes:
    entries = np.rint(np.clip(luminance, 0, 1) * 65535).astype(int)
    return b"curv" + bytes(4) + struct.pack(f">I{len(entries)}H", len(entries), *entries)


def icc_profile(space: bytes, name: str, tags: dict[bytes, bytes]) -> bytes:
    """An ICC v2 display profile of colour space ``space`` (``b"GRAY"``, ``b"RGB "``)."""
    tags = {b"desc": _description(name), b"wtpt": _xyz(D50), **tags}
    tags[b"cprt"] = b"text" + bytes(4) + b"no copyright, test data\0"
    offset = 128 + 4 + 12 * len(tags)
    table, data = struct.pack(">I", len(tags)), b""
    for signature, body in tags.items():
        table += struct.pack(">4sII", signature, offset + len(data), len(body))
        data += body + bytes(-len(body) % 4)
    header = struct.pack(">I4sI4s4s4s", offset + len(data), b"lcms", 0x02100000, b"mntr",
                         space, b"XYZ ")  # fmt: skip
    header += bytes(12) + b"acsp" + bytes(28) + struct.pack(">3i", *(round(v * 65536) for v in D50))
    return header + bytes(128 - len(header)) + table + data


def gray_gamma_22() -> bytes:
    return icc_profile(b"GRAY", "Gray Gamma 2.2", {b"kTRC": gamma_curve(2.2)})


def dot_gain_20() -> bytes:
    """A Dot Gain 20 % gray: a 50 % dot prints as 70 % (gain 0.8 k (1 - k))."""
    ink = 1 - np.linspace(0, 1, 256)
    return icc_profile(
        b"GRAY", "Dot Gain 20%", {b"kTRC": table_curve(1 - (ink + 0.8 * ink * (1 - ink)))}
    )


def adobe_rgb() -> bytes:
    curve = gamma_curve(563 / 256)
    trcs = {b"rTRC": curve, b"gTRC": curve, b"bTRC": curve}
    return icc_profile(
        b"RGB ",
        "Adobe RGB (1998) compatible",
        {**{k: _xyz(v) for k, v in ADOBE_PRIMARIES.items()}, **trcs},
    )


def littlecms(image: Image.Image, profile: bytes, mode: str = "RGB") -> np.ndarray:
    """``image`` converted from ``profile`` to sRGB by LittleCMS: the reference."""
    source = ImageCms.ImageCmsProfile(BytesIO(profile))
    target = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))
    return np.asarray(ImageCms.profileToProfile(image, source, target, outputMode=mode))


@pytest.mark.parametrize("profile", [gray_gamma_22, dot_gain_20])
def test_gray_profiles_are_read_as_littlecms_converts_them(tmp_path, profile):
    icc = profile()
    ramp = Image.fromarray(np.tile(np.arange(256, dtype=np.uint8), (16, 1)))
    reference = littlecms(ramp, icc)[0, :, 0].astype(float)  # R = G = B
    ours = srgb_gray_levels(icc, 256) / 257
    assert np.abs(ours - reference).max() < 1.5  # LittleCMS rounds to 8 bits, with its own LUT
    # And not the identity: read as sRGB, these levels would be other tones.
    assert np.abs(ours - np.arange(256)).max() > 5

    path = tmp_path / "scan.png"
    ramp.save(path, icc_profile=icc)
    photo = load_photo(path)
    assert photo.dtype == torch.uint16 and photo.shape == (1, 16, 256)
    assert np.array_equal(photo[0, 0].numpy(), srgb_gray_levels(icc, 256))  # kept at 16 bits
    rgb = load_rgb(path)[:, 0].numpy().astype(float)
    assert np.abs(rgb - reference).max() <= 1.0  # both rounded to 8 bits


def test_parametric_and_table_curves_give_the_same_tones():
    """A ``para`` curve (type 3: sRGB's own) and a 4096-entry table of it agree, and match the
    sRGB formula: the profile is read, not assumed."""
    g, a, b, c, d = 2.4, 1 / 1.055, 0.055 / 1.055, 1 / 12.92, 0.04045
    para = (
        b"para"
        + bytes(4)
        + struct.pack(">HH5i", 3, 0, *(round(v * 65536) for v in (g, a, b, c, d)))
    )
    values = np.linspace(0, 1, 4096)
    srgb = np.where(values >= 0.04045, ((values + 0.055) / 1.055) ** 2.4, values / 12.92)
    para_profile = icc_profile(b"GRAY", "parametric", {b"kTRC": para})
    table_profile = icc_profile(b"GRAY", "table", {b"kTRC": table_curve(srgb)})
    assert np.abs(gray_luminance(para_profile, values) - srgb).max() < 1e-4
    assert np.abs(gray_luminance(table_profile, values) - srgb).max() < 1e-4


def test_an_adobe_rgb_photo_is_read_as_the_colours_it_holds(tmp_path):
    """sRGB colours stored as Adobe RGB (by LittleCMS) read back as those sRGB colours."""
    original = colourful(64, 96)
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))
    adobe = ImageCms.ImageCmsProfile(BytesIO(adobe_rgb()))
    stored = ImageCms.profileToProfile(Image.fromarray(original), srgb, adobe, outputMode="RGB")
    path = tmp_path / "adobe.jpg"
    stored.save(path, quality=100, subsampling=0, icc_profile=adobe_rgb())

    read = load_rgb(path).permute(1, 2, 0).numpy().astype(int)
    unmanaged = np.asarray(stored).astype(int)
    assert np.abs(read - original).mean() < 1.5
    assert np.abs(unmanaged - original).mean() > 5 * np.abs(read - original).mean()


def test_an_unreadable_profile_is_ignored_with_a_warning(tmp_path, caplog):
    path = tmp_path / "broken.png"
    Image.fromarray(colourful(32, 32)).save(path, icc_profile=b"not a profile" * 20)
    assert load_rgb(path).shape == (3, 32, 32)
    assert f"{path}: unreadable ICC profile" in caplog.text


def read_any(path: Path) -> tuple[np.ndarray, bytes | None]:
    """The pixels (uint8 or uint16 ``[H, W, 3]``) and the embedded ICC profile of an output."""
    if path.suffix == ".tif":
        with tifffile.TiffFile(path) as tif:
            tag = tif.pages[0].tags.get(34675)
            return tif.asarray(), bytes(tag.value) if tag else None
    with Image.open(path) as image:
        icc = image.info.get("icc_profile")
    return cv2.imread(str(path), cv2.IMREAD_UNCHANGED)[..., ::-1], icc


@pytest.mark.parametrize(
    ("suffix", "bits", "profile"),
    [(".png", 16, gray_gamma_22), (".tif", 16, dot_gain_20), (".png", 8, gray_gamma_22),
     (".jpg", 8, dot_gain_20)],
)  # fmt: skip
def test_a_profiled_gray_scan_is_colorized_with_the_tones_its_profile_gives(
    main_of, tmp_path, checkpoint_of, suffix, bits, profile
):
    """The output's L is the scan's as its profile defines it (not as if it were sRGB), at the
    scan's depth, and the output is tagged sRGB."""
    top = 65535 if bits == 16 else 255
    rows, cols = np.mgrid[0:60, 0:90]
    levels = np.rint((rows / 60 + cols / 90) / 2 * top).astype(
        np.uint16 if bits == 16 else np.uint8
    )
    icc = profile()
    source = tmp_path / "in" / f"scan{suffix}"
    source.parent.mkdir()
    if suffix == ".tif":
        tifffile.imwrite(source, levels, photometric="minisblack", iccprofile=icc)
    else:
        Image.fromarray(levels).save(
            source, icc_profile=icc, **({"quality": 95} if suffix == ".jpg" else {})
        )
    args = [
        f"ckpt_path={checkpoint_of('alpha')}",
        f"input={source.parent}",
        f"output={tmp_path / 'out'}",
    ]
    result = main_of("colorizer.colorize", *args, "hydra.run.dir=run", "num_workers=0")
    assert result.returncode == 0, result.stderr

    pixels, written_icc = read_any(tmp_path / "out" / source.name)
    assert pixels.dtype == (np.uint16 if bits == 16 else np.uint8)
    assert written_icc is not None
    assert "sRGB" in ImageCms.getProfileDescription(ImageCms.ImageCmsProfile(BytesIO(written_icc)))
    after = rgb2lab(pixels / float(np.iinfo(pixels.dtype).max))[..., 0]
    if suffix == ".jpg":
        with Image.open(source) as stored:
            levels = np.asarray(stored)  # what the JPEG holds
    luminance = gray_luminance(icc, levels / float(top))
    truth = 116 * np.cbrt(np.clip(luminance, 0.008856, None)) - 16  # CIE L of Y
    truth = np.where(luminance > 0.008856, truth, 903.3 * luminance)
    as_srgb = rgb2lab(np.repeat((levels / float(top))[..., None], 3, axis=2))[..., 0]
    # Measured: 0.0005 at 16 bits, 0.08 (PNG) and 0.15 (JPEG) at 8; read as sRGB these scans
    # would be 0.62 (Gray Gamma 2.2) and 7.8 (Dot Gain 20 %) L units off.
    assert np.abs(after - truth).mean() < (0.05 if bits == 16 else 0.2)
    assert np.abs(as_srgb - truth).mean() > 0.5


def test_every_output_format_is_tagged_srgb(tmp_path):
    image = torch.from_numpy(colourful(24, 32)).permute(2, 0, 1)
    for suffix in (".png", ".jpg", ".tif", ".webp"):
        path = tmp_path / f"out{suffix}"
        write_image(image, path, 90, None)
        with Image.open(path) as written:
            assert written.info.get("icc_profile") == srgb_profile(), suffix
    deep = (image.to(torch.int32) * 257).to(torch.uint16)
    for suffix in (".png", ".tif"):
        path = tmp_path / f"deep{suffix}"
        write_image(deep, path, 90, None)
        assert read_any(path)[1] == srgb_profile(), suffix
