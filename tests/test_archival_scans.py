"""Archival scans (issue 29): large scans taken up to ``max_megapixels``, bombs still refused,
the strip-wise merge equal to the whole-image one, 16-bit masters written back at 16 bits."""

import struct
import zlib
from io import BytesIO
from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile
import torch
from PIL import Image, ImageCms
from skimage.color import rgb2lab

from colorizer.data.images import SkippedImage, load_photo
from colorizer.full_resolution import merge_in_strips, working_lightness
from colorizer.inference import full_lightness, merge_full_resolution, resize_planes
from tests.helpers import colour_photo


def run_colorize(main_of, checkpoint: Path, source: Path, out: Path, *options: str):
    """``python -m colorizer.colorize`` on ``source`` into ``out``; the CompletedProcess."""
    args = [f"ckpt_path={checkpoint}", f"input={source}", f"output={out}", "hydra.run.dir=run"]
    return main_of("colorizer.colorize", *args, "num_workers=0", *options)


def scan_texture(height: int, width: int, top: int, seed: int = 0) -> np.ndarray:
    """A gray scan's levels in [0, top]: a diagonal ramp with grain, so every level band and
    the edges of strips are exercised; float64 ``[H, W]``."""
    rows, cols = np.mgrid[0:height, 0:width]
    ramp = (rows / height + cols / width) / 2
    grain = np.random.default_rng(seed).normal(0, 0.02, (height, width))
    return np.clip(ramp + grain, 0, 1) * top


def gray_lightness(levels: np.ndarray, top: int) -> np.ndarray:
    """CIE L (scikit-image) of gray sRGB levels in [0, top]."""
    return rgb2lab(np.repeat((levels / top)[..., None], 3, axis=2))[..., 0]


# --- 1. the pixel limit --------------------------------------------------------------------------


def test_colorize_takes_archive_scans_by_default(make_cfg):
    cfg = make_cfg("ckpt_path=x", "input=x", "output=x", config_name="colorize")
    assert cfg.max_megapixels >= 1000  # a 400 MP drum scan with room to spare


def test_scans_over_pillows_limit_are_colorized_up_to_max_megapixels(
    main_of, tmp_path, checkpoint_of, monkeypatch
):
    """Pillow's guard (89 MP; here scaled down to 0.1 MP) no longer refuses a scan that
    ``max_megapixels`` allows, and the refusal above it names the limit and the key."""
    scan = tmp_path / "scans" / "scan.jpg"
    scan.parent.mkdir()
    Image.fromarray(scan_texture(400, 600, 255).astype(np.uint8)).save(scan, quality=90)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100_000)
    checkpoint = checkpoint_of("alpha")

    allowed = run_colorize(main_of, checkpoint, scan, tmp_path / "a", "max_megapixels=1")
    assert allowed.returncode == 0, allowed.stderr
    refused = run_colorize(main_of, checkpoint, scan, tmp_path / "b", "max_megapixels=0.2")
    assert refused.returncode == 1
    reason = "decompression bomb (over the 0.2-megapixel limit: max_megapixels= raises it)"
    assert f"failed: {scan}: {reason}" in refused.stderr
    assert Image.MAX_IMAGE_PIXELS == 100_000  # the process's own limit is put back
    monkeypatch.undo()
    assert Image.open(tmp_path / "a" / "scan.jpg").size == (600, 400)


def png_declaring(width: int, height: int) -> bytes:
    """A 16 x 16 gray PNG whose header claims ``width x height``: a decompression bomb."""
    data = BytesIO()
    Image.new("L", (16, 16), 128).save(data, format="PNG")
    png = bytearray(data.getvalue())
    header = b"IHDR" + struct.pack(">II", width, height) + bytes(png[24:29])
    png[12:29] = header
    png[29:33] = struct.pack(">I", zlib.crc32(header))
    return bytes(png)


def test_a_header_claiming_more_pixels_than_the_file_can_hold_is_refused(
    main_of, tmp_path, checkpoint_of
):
    """900 MP is under the default limit, but not in a hundred-odd bytes: refused from the
    header, before anything is allocated for it."""
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_declaring(30000, 30000))
    result = run_colorize(main_of, checkpoint_of("alpha"), bomb, tmp_path / "out")
    assert result.returncode == 1
    size = bomb.stat().st_size
    assert (
        f"failed: {bomb}: decompression bomb (declares 30000 x 30000 pixels in {size} bytes, "
        "more than 1000 per byte)" in result.stderr
    )
    assert not (tmp_path / "out" / "bomb.png").exists()


def test_training_data_takes_scans_up_to_data_max_megapixels(tmp_path, monkeypatch):
    """The training guard is Pillow's (here scaled down to 0.05 MP); ``data.max_megapixels``
    raises it for every read: the scan, the resized cache and the loaders."""
    from colorizer.data.curated import CuratedDataModule
    from colorizer.errors import DataError

    for i in range(6):
        colour_photo(320, 240, seed=i).save(tmp_path / f"photo{i}.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 50_000)
    options = {"root": str(tmp_path), "image_size": 32, "batch_size": 2, "num_workers": 0}
    with pytest.raises(DataError) as refused:
        CuratedDataModule(**options).setup("fit")
    assert "6 decompression bomb" in str(refused.value)
    assert "over the 0.05-megapixel limit: data.max_megapixels= raises it" in str(refused.value)

    data = CuratedDataModule(**options, max_megapixels=0.1, resized_cache=str(tmp_path / "c"))
    data.setup("fit")
    assert len(data.train_set) + len(data.val_set) + len(data.test_set) == 6
    assert data.train_set[0].shape == (3, 32, 32) and data.val_set[0].shape == (3, 32, 32)
    assert Image.MAX_IMAGE_PIXELS == 50_000
    assert "max_megapixels" in CuratedDataModule.split_settings


# --- 2. the merge in strips ----------------------------------------------------------------------


def smooth_chroma(height: int, width: int, seed: int = 1) -> torch.Tensor:
    """Normalised ab ``[1, 2, h, w]``: saturated enough that some pixels leave the gamut."""
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(1, 2, height, width, generator=generator).mul(1.4).sub(0.7)


@pytest.mark.parametrize("channels", [1, 3])
def test_strips_merge_as_the_whole_image_does(channels: int):
    """Strips of 7 rows (a height the chroma's rows do not divide) give the whole-image
    merge's pixels up to one level of rounding (the strips interpolate chroma rows with
    float64 positions, the whole image in float32), and exactly one strip's: no seams."""
    gray = scan_texture(301, 419, 255).astype(np.uint8)
    photo = torch.from_numpy(gray)[None]
    if channels == 3:
        tint = torch.tensor([1.0, 0.9, 0.8]).view(3, 1, 1)
        photo = (photo.float() * tint).round().to(torch.uint8)
    ab = smooth_chroma(19, 26)
    (whole_l,) = full_lightness([photo.expand(3, -1, -1)], torch.device("cpu"))
    whole = merge_full_resolution(whole_l, ab)[0]
    strips = merge_in_strips(photo, ab, strip_pixels=419 * 7)
    assert strips.shape == whole.shape and strips.dtype == torch.uint8
    difference = (strips.int() - whole.int()).abs()
    assert difference.max() <= 1
    assert (difference > 0).float().mean() < 1e-3  # rounding, not a systematic shift
    one_strip = merge_in_strips(photo, ab, strip_pixels=301 * 419)
    assert torch.equal(strips, one_strip)

    working = working_lightness(photo, (64, 89), torch.device("cpu"), strip_pixels=419 * 7)
    assert torch.allclose(working, resize_planes(whole_l, (64, 89)), atol=1e-5)


def test_strips_of_a_16_bit_scan_merge_as_one_strip_does():
    photo = torch.from_numpy(scan_texture(203, 157, 65535).round().astype(np.uint16))[None]
    ab = smooth_chroma(11, 9)
    one = merge_in_strips(photo, ab, strip_pixels=203 * 157)
    strips = merge_in_strips(photo, ab, strip_pixels=157 * 5)
    assert one.dtype == torch.uint16
    assert torch.equal(strips, one)


# --- 3. 16-bit in, 16-bit out --------------------------------------------------------------------


def read_16_bit_rgb(path: Path) -> np.ndarray:
    """uint16 ``[H, W, 3]`` RGB as stored, read without Pillow (which cannot hold it)."""
    if path.suffix == ".tif":
        return tifffile.imread(path)
    return cv2.imread(str(path), cv2.IMREAD_UNCHANGED)[..., ::-1]


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_a_16_bit_gray_master_comes_out_16_bit_with_its_lightness(
    main_of, tmp_path, checkpoint_of, suffix: str
):
    levels = scan_texture(90, 130, 65535).round().astype(np.uint16)
    source = tmp_path / "masters" / f"plate{suffix}"
    source.parent.mkdir()
    Image.fromarray(levels).save(source)  # Pillow's I;16: PNG and TIFF alike
    checkpoint = checkpoint_of("alpha")
    result = run_colorize(main_of, checkpoint, source.parent, tmp_path / "out")
    assert result.returncode == 0, result.stderr

    output = read_16_bit_rgb(tmp_path / "out" / source.name)
    assert output.dtype == np.uint16 and output.shape == (90, 130, 3)
    assert len(np.unique(output)) > 1024  # the tones of 16 bits, not 256 levels scaled up
    after = rgb2lab(output / 65535.0)[..., 0]
    assert np.abs(after - gray_lightness(levels.astype(np.float64), 65535)).mean() < 0.05
    assert np.abs(rgb2lab(output / 65535.0)[..., 1:]).mean() > 0.5  # and it is coloured

    jpeg = run_colorize(main_of, checkpoint, source, tmp_path / "jpg", "format=jpg")
    assert jpeg.returncode == 0, jpeg.stderr
    with Image.open(tmp_path / "jpg" / "plate.jpg") as written:
        assert written.mode == "RGB"  # format= still asks for 8 bits


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_a_16_bit_rgb_scan_of_a_print_comes_out_16_bit_with_its_lightness(
    main_of, tmp_path, checkpoint_of, suffix: str
):
    """Scanners often save a black-and-white print as 16-bit RGB: its L is read from all 16
    bits of each channel (Pillow alone would give 8), and written back at 16. The PNG is
    stored rotated, with EXIF orientation 6: read upright as any photo is."""
    levels = scan_texture(90, 130, 65535).round().astype(np.uint16)
    warm = np.stack([levels, levels, (levels * 0.97).astype(np.uint16)], axis=2)  # a toned print
    source = tmp_path / "prints" / f"print{suffix}"
    source.parent.mkdir()
    if suffix == ".tif":
        tifffile.imwrite(source, warm, photometric="rgb")
    else:
        exif = Image.Exif()
        exif[0x0112] = 6  # turns the stored image back clockwise
        stored = np.ascontiguousarray(np.rot90(warm, 1)[..., ::-1])  # BGR for OpenCV
        cv2.imwriteWithMetadata(str(source), stored, [cv2.IMAGE_METADATA_EXIF],
                                [np.frombuffer(exif.tobytes()[6:], np.uint8)])  # fmt: skip
    result = run_colorize(main_of, checkpoint_of("alpha"), source, tmp_path / "out")
    assert result.returncode == 0, result.stderr

    output = read_16_bit_rgb(tmp_path / "out" / source.name)
    assert output.dtype == np.uint16 and output.shape == (90, 130, 3)
    assert len(np.unique(output)) > 1024
    truth = rgb2lab(warm / 65535.0)[..., 0]
    assert np.abs(rgb2lab(output / 65535.0)[..., 0] - truth).mean() < 0.05


def test_16_bit_colour_that_cannot_be_read_deep_is_skipped_or_read_at_8_bits(tmp_path):
    """A cut 16-bit PNG is "truncated or corrupt"; one with a profile other than sRGB goes to
    Pillow and LittleCMS (at 8 bits) rather than being read deep in its own colour space."""
    deep = (np.random.default_rng(0).random((40, 50, 3)) * 65535).astype(np.uint16)
    whole = tmp_path / "whole.png"
    cv2.imwrite(str(whole), deep)
    cut = tmp_path / "cut.png"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    with pytest.raises(SkippedImage, match="truncated or corrupt"):
        load_photo(cut)
    assert load_photo(whole).dtype == torch.uint16

    lab = ImageCms.ImageCmsProfile(ImageCms.createProfile("LAB"))  # any profile but sRGB
    tagged = tmp_path / "tagged.png"
    cv2.imwriteWithMetadata(str(tagged), deep, [cv2.IMAGE_METADATA_ICCP],
                            [np.frombuffer(lab.tobytes(), np.uint8)])  # fmt: skip
    assert load_photo(tagged).dtype == torch.uint8
