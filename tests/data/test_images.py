"""load_rgb / scan_images on real awkward files: every mode converted, every bad file refused."""

from __future__ import annotations

import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile

from colorizer.data.images import (
    SkippedImage,
    format_reasons,
    format_summary,
    is_grayscale,
    list_image_files,
    load_rgb,
    scan_images,
)

GRAY_LEVELS = np.array([[0, 32768, 65535, 1000]], dtype=np.uint16).repeat(16, 0).repeat(4, 1)
GRAY_EXPECTED = [0, 128, 255, 4]  # 16-bit scaled by 255/65535, rounded: not clipped at 255


@pytest.fixture
def awkward(tmp_path: Path, make_photo, truncated_jpeg) -> Path:
    """A folder of one file per awkward case, named after the case."""
    make_photo(64, 48).save(tmp_path / "normal.jpg", quality=95)
    make_photo(64, 48, seed=1).save(tmp_path / "normal.png")

    # Stored 40 wide x 24 high with a red block top-left; orientation 6 = rotate 90° clockwise.
    rotated = Image.new("RGB", (40, 24), (255, 255, 255))
    rotated.paste((255, 0, 0), (0, 0, 8, 8))
    exif = Image.Exif()
    exif[0x0112] = 6
    rotated.save(tmp_path / "rotated.jpg", quality=95, exif=exif)

    Image.new("RGB", (32, 32), (220, 30, 40)).convert("CMYK").save(tmp_path / "cmyk.jpg")

    palette = Image.new("P", (32, 32), 0)  # index 0 (blue) is transparent, 1 is red
    palette.putpalette([0, 0, 255, 255, 0, 0] + [0] * 762)
    palette.paste(1, (0, 0, 16, 32))
    palette.save(tmp_path / "palette.png", transparency=0)

    rgba = np.zeros((32, 32, 4), dtype=np.uint8)
    rgba[:, :16] = (255, 0, 0, 255)  # opaque red
    rgba[:, 16:24] = (0, 0, 255, 0)  # fully transparent blue
    rgba[:, 24:] = (255, 0, 0, 128)  # half transparent red
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")

    la = np.zeros((32, 32, 2), dtype=np.uint8)
    la[:, :16] = (50, 255)
    la[:, 16:] = (50, 0)
    Image.fromarray(la, "LA").save(tmp_path / "la.png")

    Image.fromarray(GRAY_LEVELS).save(tmp_path / "gray16.png")
    big_endian = GRAY_LEVELS.astype(">u2").tobytes()
    Image.frombytes("I;16B", GRAY_LEVELS.shape[::-1], big_endian).save(tmp_path / "gray16b.tif")
    Image.fromarray(GRAY_LEVELS.astype(np.int32)).save(tmp_path / "int32.tif")
    floats = np.array([[0.0, 0.5, 1.0, 0.25]], dtype=np.float32).repeat(16, 0).repeat(4, 1)
    Image.fromarray(floats).save(tmp_path / "float.tif")

    checker = (np.indices((16, 16)).sum(0) % 2).astype(bool)
    Image.fromarray(checker).save(tmp_path / "bilevel.png")

    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "page.jpg").write_text("<!DOCTYPE html><html><body>404 Not Found</body></html>")
    (tmp_path / "truncated.jpg").write_bytes(truncated_jpeg)
    make_photo(4, 4).save(tmp_path / "tiny.png")
    make_photo(64, 48).convert("L").convert("RGB").save(tmp_path / "gray.jpg", quality=75)
    return tmp_path


def test_normal_files_load_as_uint8_rgb(awkward: Path, make_photo) -> None:
    png = load_rgb(awkward / "normal.png")
    assert png.dtype == torch.uint8 and png.shape == (3, 48, 64)
    assert torch.equal(png, torch.from_numpy(np.array(make_photo(64, 48, seed=1))).permute(2, 0, 1))
    jpg = load_rgb(awkward / "normal.jpg").int()
    original = torch.from_numpy(np.array(make_photo(64, 48))).permute(2, 0, 1).int()
    assert jpg.shape == (3, 48, 64)
    assert (jpg - original).abs().float().mean() < 4


def test_exif_orientation_is_applied(awkward: Path) -> None:
    image = load_rgb(awkward / "rotated.jpg")
    assert image.shape == (3, 40, 24)  # height and width swapped
    # Rotating clockwise carries the top-left block to the top-right corner.
    assert image[:, 3, 20].tolist() == pytest.approx([255, 0, 0], abs=40)
    assert image[:, 3, 3].tolist() == pytest.approx([255, 255, 255], abs=40)
    assert image[:, 36, 3].tolist() == pytest.approx([255, 255, 255], abs=40)


def test_cmyk_jpeg_keeps_its_colour(awkward: Path) -> None:
    assert Image.open(awkward / "cmyk.jpg").mode == "CMYK"
    pixel = load_rgb(awkward / "cmyk.jpg")[:, 16, 16]
    assert pixel.tolist() == pytest.approx([220, 30, 40], abs=8)


def test_transparency_is_composited_on_white(awkward: Path) -> None:
    palette = load_rgb(awkward / "palette.png")
    assert palette[:, 5, 5].tolist() == [255, 0, 0]
    assert palette[:, 5, 25].tolist() == [255, 255, 255]  # was transparent blue

    rgba = load_rgb(awkward / "rgba.png")
    assert rgba[:, 5, 5].tolist() == [255, 0, 0]
    assert rgba[:, 5, 20].tolist() == [255, 255, 255]  # fully transparent: white, not blue
    assert rgba[:, 5, 28].tolist() == pytest.approx([255, 127, 127], abs=1)

    la = load_rgb(awkward / "la.png")
    assert la[:, 5, 5].tolist() == [50, 50, 50]
    assert la[:, 5, 25].tolist() == [255, 255, 255]


@pytest.mark.parametrize("name", ["gray16.png", "gray16b.tif", "int32.tif"])
def test_16_bit_is_scaled_not_clipped(awkward: Path, name: str) -> None:
    assert Image.open(awkward / name).mode in {"I;16", "I;16B", "I"}
    image = load_rgb(awkward / name)
    assert image.shape == (3, 16, 16)
    assert image[0, 0, ::4].tolist() == GRAY_EXPECTED
    assert torch.equal(image[0], image[1]) and torch.equal(image[1], image[2])


def test_float_and_bilevel_images(awkward: Path) -> None:
    assert load_rgb(awkward / "float.tif")[:, 0, ::4].tolist() == [[0, 128, 255, 64]] * 3
    bilevel = load_rgb(awkward / "bilevel.png")
    assert set(bilevel.unique().tolist()) == {0, 255}
    assert bilevel[:, 0, 0].tolist() == [0, 0, 0] and bilevel[:, 0, 1].tolist() == [255] * 3


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("empty.jpg", "empty file"),
        ("page.jpg", "not an image"),
        ("truncated.jpg", "truncated or corrupt"),
        ("tiny.png", "too small"),
    ],
)
@pytest.mark.parametrize("decode_size", [None, 32])
def test_bad_files_are_refused_with_a_reason(
    awkward: Path, name: str, reason: str, decode_size: int | None
) -> None:
    with pytest.raises(SkippedImage) as raised:
        load_rgb(awkward / name, decode_size=decode_size)
    assert raised.value.reason == reason
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False  # refused without relying on a flag flip


def test_small_images_load_when_allowed(awkward: Path) -> None:
    assert load_rgb(awkward / "tiny.png", min_size=4).shape == (3, 4, 4)


@pytest.mark.parametrize("limit", [3000, 1000])  # PIL warns above the limit, raises above 2x
def test_decompression_bombs_are_refused(
    tmp_path: Path, make_photo, monkeypatch: pytest.MonkeyPatch, limit: int
) -> None:
    make_photo(64, 64).save(tmp_path / "bomb.png")  # 4096 pixels
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", limit)
    filters_before = list(warnings.filters)
    with pytest.raises(SkippedImage) as raised:
        load_rgb(tmp_path / "bomb.png")
    assert raised.value.reason == "decompression bomb"
    assert warnings.filters == filters_before  # the error filter stayed local
    assert scan_images([tmp_path / "bomb.png"]).skipped == Counter({"decompression bomb": 1})


def test_gray_jpeg_loads_but_counts_as_grayscale(awkward: Path) -> None:
    image = load_rgb(awkward / "gray.jpg")
    assert image.shape == (3, 48, 64)
    assert is_grayscale(image)
    assert not is_grayscale(load_rgb(awkward / "normal.jpg"))


def test_is_grayscale_tolerates_chroma_noise_but_sees_colour(make_photo) -> None:
    gray = torch.from_numpy(np.array(make_photo(64, 64).convert("L"))).expand(3, -1, -1)
    noise = torch.randint(-3, 4, (3, 64, 64), generator=torch.Generator().manual_seed(0))
    noisy = (gray.int() + noise).clamp(0, 255).to(torch.uint8)
    assert is_grayscale(noisy)  # JPEG-like chroma noise of a few levels is still gray
    stamped = noisy.clone()
    stamped[:, :4, :4] = torch.tensor([200, 30, 30], dtype=torch.uint8).view(3, 1, 1)
    assert is_grayscale(stamped)  # 16 of 4096 pixels: a tiny coloured stamp on a gray print
    patched = noisy.clone()
    patched[:, :, :16] = torch.tensor([200, 30, 30], dtype=torch.uint8).view(3, 1, 1)
    assert not is_grayscale(patched)  # a quarter of the picture in colour


def test_scan_counts_every_reason(awkward: Path) -> None:
    files = list_image_files(awkward)
    result = scan_images(files, workers=2)
    usable = ["cmyk.jpg", "normal.jpg", "normal.png", "palette.png", "rgba.png", "rotated.jpg"]
    assert [p.name for p in result.paths] == usable
    assert result.skipped == Counter(
        {
            "grayscale": 7,  # la, gray16, gray16b, int32, float, bilevel, gray.jpg
            "empty file": 1,
            "not an image": 1,
            "truncated or corrupt": 1,
            "too small": 1,
        }
    )
    assert result.rejected[awkward / "truncated.jpg"] == "truncated or corrupt"
    assert format_summary("train", len(files), result) == (
        "train: 17 found, 6 used, 11 skipped (7 grayscale, 1 empty file, 1 not an image, "
        "1 truncated or corrupt, 1 too small)"
    )

    with_gray = scan_images(reversed(files), exclude_grayscale=False)
    assert len(with_gray.paths) == 13 and with_gray.paths == sorted(with_gray.paths)
    assert "grayscale" not in with_gray.skipped


def test_summary_without_skips() -> None:
    result = scan_images([])
    assert format_summary("val", 0, result) == "val: 0 found, 0 used, 0 skipped"


def test_list_image_files_recursive_sorted_case_insensitive(tmp_path: Path, make_photo) -> None:
    names = ["b.JPG", "sub/a.png", "sub/deeper/c.jpeg", ".hidden.jpg", ".cache/d.jpg", "e.txt"]
    for name in names:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        make_photo(8, 8).save(tmp_path / name, format="PNG")
    found = [p.relative_to(tmp_path).as_posix() for p in list_image_files(tmp_path)]
    assert found == ["b.JPG", "sub/a.png", "sub/deeper/c.jpeg"]


def test_every_source_words_its_refusals_alike():
    # Skipped files: most frequent first, ties in the scan's own vocabulary order.
    assert format_reasons(Counter({"grayscale": 1, "too small": 1, "truncated or corrupt": 2})) == (
        "2 truncated or corrupt, 1 too small, 1 grayscale"
    )
    # Failed URLs or annotation entries (words outside that vocabulary): ties alphabetically,
    # whatever order they were counted in; nothing counted zero times.
    counts = Counter({"unsafe file_name": 1, "missing file": 1, "timeout": 3, "http 404": 0})
    assert format_reasons(counts) == "3 timeout, 1 missing file, 1 unsafe file_name"
    assert format_reasons({}) == ""
