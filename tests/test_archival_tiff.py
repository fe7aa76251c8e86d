"""TIFF as archives write it (issue 29, item 5): LZW/ZIP-compressed, tiled, BigTIFF and
multi-page masters are colorized page by page at their depth, the scanner's tags kept."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image
from skimage.color import rgb2lab

from colorizer.photo_files import PhotoFiles, find_jobs

SCANNER = {
    "software": "EPSON Scan 3.9.4",
    "datetime": "1931:05:17 10:00:00",
    "description": "Plate 12, glass negative",
    "resolution": (2400, 2400),
    "resolutionunit": "INCH",
    "extratags": [(271, "s", 0, "EPSON", True), (272, "s", 0, "Perfection V850", True),
                  (315, "s", 0, "A. Archivist", True), (33432, "s", 0, "(c) The Museum", True)],
}  # fmt: skip
SCANNER_TAGS = {
    271: "EPSON", 272: "Perfection V850", 305: "EPSON Scan 3.9.4", 306: "1931:05:17 10:00:00",
    270: "Plate 12, glass negative", 315: "A. Archivist", 33432: "(c) The Museum",
}  # fmt: skip


def plate(height: int, width: int, top: int, seed: int = 0) -> np.ndarray:
    """A gray plate's levels in [0, top]: a ramp with grain, uint8 or uint16 ``[H, W]``."""
    rows, cols = np.mgrid[0:height, 0:width]
    grain = np.random.default_rng(seed).normal(0, 0.02, (height, width))
    levels = np.clip((rows / height + cols / width) / 2 + grain, 0, 1) * top
    return np.rint(levels).astype(np.uint16 if top > 255 else np.uint8)


def lightness(levels: np.ndarray) -> np.ndarray:
    """CIE L of gray or RGB levels (uint8 or uint16)."""
    values = levels / float(np.iinfo(levels.dtype).max)
    return rgb2lab(values if values.ndim == 3 else np.repeat(values[..., None], 3, axis=2))[..., 0]


def colorize(main_of, checkpoint: Path, source: Path, out: Path, *options: str):
    args = [f"ckpt_path={checkpoint}", f"input={source}", f"output={out}", "hydra.run.dir=run"]
    result = main_of("colorizer.colorize", *args, "num_workers=0", *options)
    assert result.returncode == 0, result.stderr
    return result


def test_compressed_tiled_and_big_tiffs_keep_their_depth_lightness_and_scanner_tags(
    main_of, tmp_path, checkpoint_of
):
    masters = tmp_path / "masters"
    masters.mkdir()
    written = {
        "lzw_8.tif": plate(70, 90, 255, 1),
        "zip_16.tif": plate(70, 90, 65535, 2),
        "tiled_16.tif": plate(140, 150, 65535, 3),
        "big_8.tif": plate(70, 90, 255, 4),
    }
    Image.fromarray(written["lzw_8.tif"]).save(masters / "lzw_8.tif", compression="tiff_lzw")
    tifffile.imwrite(masters / "zip_16.tif", written["zip_16.tif"], compression="zlib", **SCANNER)
    tifffile.imwrite(masters / "tiled_16.tif", written["tiled_16.tif"], tile=(64, 64),
                     compression="zlib", **SCANNER)  # fmt: skip
    tifffile.imwrite(masters / "big_8.tif", written["big_8.tif"], bigtiff=True, **SCANNER)
    with Image.open(masters / "lzw_8.tif") as lzw:
        assert lzw.info["compression"] == "tiff_lzw"
    with tifffile.TiffFile(masters / "big_8.tif") as big:
        assert big.is_bigtiff and not tifffile.TiffFile(masters / "tiled_16.tif").is_bigtiff

    colorize(main_of, checkpoint_of("alpha"), masters, tmp_path / "out")
    for name, levels in written.items():
        with tifffile.TiffFile(tmp_path / "out" / name) as tif:
            (page,) = tif.pages
            pixels = page.asarray()
            tags = {tag.code: tag.value for tag in page.tags}
        assert pixels.dtype == levels.dtype and pixels.shape == (*levels.shape, 3), name
        tolerance = 0.05 if levels.dtype == np.uint16 else 0.3
        assert np.abs(lightness(pixels) - lightness(levels)).mean() < tolerance, name
        assert np.abs(rgb2lab(pixels / float(np.iinfo(pixels.dtype).max))[..., 1:]).mean() > 0.5
        assert 34675 in tags, name  # the sRGB profile
        if name != "lzw_8.tif":
            assert {code: tags.get(code) for code in SCANNER_TAGS} == SCANNER_TAGS, name
            assert tags[282] == (2400, 1) and tags[283] == (2400, 1) and tags[296] == 2


def test_every_page_of_a_multi_page_tiff_is_colorized_and_kept(main_of, tmp_path, checkpoint_of):
    """Three pages (a 16-bit plate, its 8-bit thumbnail, a second plate) come out as three
    colorized pages in order, each with its own lightness, at one depth (8 bits: a TIFF's
    pages here share one, and the thumbnail has only 8)."""
    pages = [plate(80, 100, 65535, 1), plate(20, 25, 255, 2), plate(60, 90, 65535, 3)]
    source = tmp_path / "in" / "album.tif"
    source.parent.mkdir()
    with tifffile.TiffWriter(source) as tif:
        for page in pages:
            tif.write(page, photometric="minisblack", **SCANNER)
    with Image.open(source) as opened:
        assert opened.n_frames == 3

    checkpoint = checkpoint_of("alpha")
    colorize(main_of, checkpoint, source, tmp_path / "out")
    with tifffile.TiffFile(tmp_path / "out" / "album.tif") as tif:
        outputs = [page.asarray() for page in tif.pages]
    assert [out.shape for out in outputs] == [(*page.shape, 3) for page in pages]
    for out, page in zip(outputs, pages, strict=True):
        assert np.abs(lightness(out) - lightness(page)).mean() < 0.3
        assert np.abs(rgb2lab(out / float(np.iinfo(out.dtype).max))[..., 1:]).mean() > 0.5

    # Another format keeps the first page only, so the others are not even decoded.
    (item,) = PhotoFiles(find_jobs(str(source), tmp_path / "jpg", "jpg"))
    assert item["error"] is None and item["pages"] == [] and item["pages_left_out"] == 2
    result = colorize(main_of, checkpoint, source, tmp_path / "jpg", "format=jpg")
    assert "2 further pages are kept only in a TIFF output (format=tif)" in result.stderr
    with Image.open(tmp_path / "jpg" / "album.jpg") as first:
        assert first.size == (100, 80)
        exif = first.getexif()
    # The scanner's description survives in EXIF; the TIFF's layout tags do not.
    assert exif[271] == "EPSON" and exif[306] == "1931:05:17 10:00:00"
    assert not {256, 257, 273, 279} & set(exif)


@pytest.mark.parametrize("bits", [8, 16])
def test_a_page_that_cannot_be_read_fails_the_file_in_one_line(
    main_of, tmp_path, checkpoint_of, bits
):
    """A multi-page TIFF whose second page is cut short fails as a whole (its pages belong
    together), and no output is left."""
    top = 65535 if bits == 16 else 255
    source = tmp_path / "in" / "cut.tif"
    source.parent.mkdir()
    with tifffile.TiffWriter(source) as tif:
        tif.write(plate(60, 80, top, 1))
        tif.write(plate(60, 80, top, 2))
    data = source.read_bytes()
    with tifffile.TiffFile(source) as tif:
        second = tif.pages[1].dataoffsets[0]
    source.write_bytes(data[: second + 100])
    args = [f"ckpt_path={checkpoint_of('alpha')}", f"input={source}", f"output={tmp_path / 'out'}"]
    result = main_of("colorizer.colorize", *args, "hydra.run.dir=run", "num_workers=0")
    assert result.returncode == 1
    assert f"failed: {source}: truncated or corrupt" in result.stderr
    assert not (tmp_path / "out" / "cut.tif").exists()


def test_exif_reaches_a_tiff_output_with_its_sub_directory(main_of, tmp_path, checkpoint_of):
    """A photo's EXIF (camera, date, and the EXIF directory's DateTimeOriginal) is in the TIFF
    colorize writes, as it is in any other format: read back by Pillow and by tifffile."""
    folder = tmp_path / "in"
    folder.mkdir()
    exif = Image.Exif()
    exif[271], exif[306] = "Leica", "1931:05:17 10:00:00"
    exif.get_ifd(0x8769)[36867] = "1931:05:16 09:00:00"  # DateTimeOriginal
    Image.fromarray(plate(60, 80, 255, 5)).save(folder / "photo.jpg", exif=exif, quality=95)

    colorize(main_of, checkpoint_of("alpha"), folder, tmp_path / "out", "format=tif")
    with Image.open(tmp_path / "out" / "photo.tif") as written:
        assert written.mode == "RGB"
        kept = written.getexif()
        directory = kept.get_ifd(0x8769)  # read from the open file
    assert kept[271] == "Leica" and kept[306] == "1931:05:17 10:00:00"
    assert directory.get(36867) == "1931:05:16 09:00:00"
    with tifffile.TiffFile(tmp_path / "out" / "photo.tif") as tif:
        assert tif.pages[0].tags["ExifTag"].value["DateTimeOriginal"] == "1931:05:16 09:00:00"

    # A TIFF with an EXIF directory, colorized again, keeps it too.
    colorize(main_of, checkpoint_of("alpha"), tmp_path / "out", tmp_path / "again")
    with tifffile.TiffFile(tmp_path / "again" / "photo.tif") as tif:
        exif_directory = tif.pages[0].tags["ExifTag"].value
        assert tif.pages[0].tags["Make"].value == "Leica"
    assert exif_directory["DateTimeOriginal"] == "1931:05:16 09:00:00"
