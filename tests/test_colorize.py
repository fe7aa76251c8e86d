"""colorizer.colorize: full-resolution outputs, luminance kept, bad files counted, exit status."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from skimage.color import rgb2lab

from colorizer.colorize import colorize
from colorizer.errors import ConfigError
from colorizer.inference import ChromaNetwork, TorchNetwork, colorize_full_resolution, working_shape
from colorizer.models import load_model
from colorizer.models.spec import ModelSpec
from colorizer.photo_files import find_jobs, output_name
from tests.helpers import SMALL_MODELS, assert_one_line_error, colourful

GOOD = {
    # name in the input folder -> (upright width, height) the output must have
    "large/panorama.jpg": (1600, 600),
    "portrait_exif.jpg": (200, 300),  # stored 300 x 200 with EXIF orientation 6 (rotate 90°)
    "scans/scan.png": (257, 131),  # 8-bit grayscale
    "scans/scan16.png": (120, 90),  # 16-bit grayscale
    "logo.png": (64, 48),  # RGBA
    "tiny.gif": (10, 7),  # palette; written as tiny.png
}
BAD = {"broken/truncated.jpg": "truncated or corrupt", "broken/empty.jpg": "empty file"}
BAD |= {"broken/notes.png": "not an image"}


def write_photo_folder(root: Path) -> None:
    """GOOD and BAD files under ``root``, plus a text file that is not an input at all."""
    for name in (*GOOD, *BAD):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(colourful(600, 1600)).save(root / "large/panorama.jpg", quality=92)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, shown portrait
    exif[0x0132] = "1931:05:17 10:00:00"  # DateTime: must survive into the output
    Image.fromarray(colourful(200, 300, 1)).save(root / "portrait_exif.jpg", exif=exif)
    Image.fromarray(colourful(131, 257, 2)[..., 0]).save(root / "scans/scan.png")
    ramp = (np.arange(120 * 90, dtype=np.uint32).reshape(90, 120) * 6).astype(np.uint16)
    Image.fromarray(ramp).save(root / "scans/scan16.png")  # mode I;16
    rgba = np.dstack([colourful(48, 64, 3), np.full((48, 64), 200, np.uint8)])
    Image.fromarray(rgba, "RGBA").save(root / "logo.png")
    Image.fromarray(colourful(7, 10, 4)).convert("P").save(root / "tiny.gif")
    intact = (root / "large/panorama.jpg").read_bytes()
    (root / "broken/truncated.jpg").write_bytes(intact[: len(intact) // 3])
    (root / "broken/empty.jpg").write_bytes(b"")
    (root / "broken/notes.png").write_text("not a picture")
    (root / "README.txt").write_text("scanned 2026")


def upright_rgb(path: Path) -> np.ndarray:
    """What the input looks like, as 8-bit RGB, independently of colorizer's loader."""
    with Image.open(path) as image:
        image = image.transpose(Image.Transpose.ROTATE_270) if "exif" in path.name else image
        if image.mode == "I;16":
            return np.repeat((np.asarray(image) / 257).round().astype(np.uint8)[..., None], 3, 2)
        if image.mode == "RGBA":
            white = Image.new("RGBA", image.size, "white")
            return np.asarray(Image.alpha_composite(white, image).convert("RGB"))
        return np.asarray(image.convert("RGB"))


def lightness_error(source: Path, output: Path) -> np.ndarray:
    """|L(output) - L(input)| per pixel, CIE Lab by scikit-image (not colorizer's kornia)."""
    before = rgb2lab(upright_rgb(source) / 255.0)[..., 0]
    after = rgb2lab(np.asarray(Image.open(output).convert("RGB")) / 255.0)[..., 0]
    return np.abs(after - before)


def test_folder_of_awkward_photos_keeps_sizes_and_luminance_and_counts_failures(
    main_of, tmp_path, checkpoint_of
):
    photos, out = tmp_path / "photos", tmp_path / "coloured"
    write_photo_folder(photos)
    args = [f"ckpt_path={checkpoint_of('alpha')}", f"input={photos}", f"output={out}"]
    result = main_of("colorizer.colorize", *args, "batch_size=3", "hydra.run.dir=run")
    assert result.returncode == 1, result.stderr  # some photos failed
    assert "Traceback" not in result.stderr
    for name, reason in BAD.items():
        assert f"failed: {photos / name}: {reason}" in result.stderr
    assert "colorized 6 of 9, skipped 0, failed 3 (" in result.stderr

    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert (summary["colorized"], summary["failed"], summary["skipped"]) == (6, 3, 0)
    assert summary["failed_reasons"] == {reason: 1 for reason in BAD.values()}
    assert summary["colour_inputs_recoloured"] == 4  # the panorama, portrait, logo and GIF

    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*"))
    expected = [output_name(Path(name), None).as_posix() for name in GOOD]
    assert written == sorted([*expected, "large", "scans"])  # nothing for failures, no temps
    for name, size in GOOD.items():
        output = out / output_name(Path(name), None)
        assert Image.open(output).size == size, name
        error = lightness_error(photos / name, output)
        lossless = output.suffix == ".png"  # JPEG re-encoding adds its own error
        assert error.mean() < (0.3 if lossless else 1.0), name
        assert np.percentile(error, 99) < (1.0 if lossless else 4.0), name
    metadata = Image.open(out / "portrait_exif.jpg").getexif()
    assert metadata.get(0x0132) == "1931:05:17 10:00:00"  # the photo's date survives
    assert metadata.get(0x0112) == 1  # and its pixels are upright, so orientation is reset


def test_rerun_skips_done_photos_and_exits_zero_when_all_succeed(main_of, tmp_path, checkpoint_of):
    photos, out = tmp_path / "photos", tmp_path / "coloured"
    write_photo_folder(photos)
    common = [f"ckpt_path={checkpoint_of('alpha')}", f"output={out}", "hydra.run.dir=run"]
    first = main_of("colorizer.colorize", *common, f"input={photos}/scans/*.png", "format=jpg")
    assert first.returncode == 0, first.stderr
    assert sorted(p.name for p in out.iterdir()) == ["scan.jpg", "scan16.jpg"]  # glob base kept
    again = main_of("colorizer.colorize", *common, f"input={photos}/scans/*.png", "format=jpg")
    assert again.returncode == 0, again.stderr
    assert "colorized 0 of 2, skipped 2 (2 output exists" in again.stderr


def test_usage_errors_are_one_line_with_status_2(main_of, tmp_path, checkpoint_of):
    result = main_of(
        "colorizer.colorize", f"ckpt_path={checkpoint_of('alpha')}", "input=nowhere", "output=out"
    )
    assert_one_line_error(result, "input=nowhere does not exist")
    assert not (tmp_path / "out").exists()


def configure(make_cfg, checkpoint: Path, photos: Path, out: Path, *overrides: str):
    args = [f"ckpt_path={checkpoint}", f"input={photos}", f"output={out}", *overrides]
    return make_cfg(*args, config_name="colorize")


@pytest.mark.parametrize("name", list(SMALL_MODELS))
def test_every_model_colorizes_at_full_resolution(make_cfg, tmp_path, checkpoint_of, name):
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(colourful(97, 150)).save(photos / "wide.png")
    Image.fromarray(colourful(301, 64, 1)[..., 1]).save(photos / "tall_gray.png")
    cfg = configure(make_cfg, checkpoint_of(name), photos, tmp_path / "out", "batch_size=2")
    summary = colorize(cfg)
    assert (summary["model"], summary["colorized"], summary["failed"]) == (name, 2, 0)
    for file, size in (("wide.png", (150, 97)), ("tall_gray.png", (64, 301))):
        output = tmp_path / "out" / file
        assert Image.open(output).size == size
        assert np.percentile(lightness_error(photos / file, output), 99) < 1.0


def test_color_inputs_skip_and_compare(make_cfg, tmp_path, checkpoint_of):
    photos, out = tmp_path / "photos", tmp_path / "out"
    photos.mkdir()
    Image.fromarray(colourful(40, 60)).save(photos / "colour.png")
    Image.fromarray(colourful(40, 60)[..., 0]).save(photos / "gray.png")
    cfg = configure(
        make_cfg, checkpoint_of("alpha"), photos, out, "color_inputs=skip", "compare=true"
    )
    summary = colorize(cfg)
    assert summary["skipped_reasons"] == {"colour photo (color_inputs=skip)": 1}
    assert sorted(p.name for p in out.iterdir()) == ["gray.png", "gray_before_after.png"]
    pair = np.asarray(Image.open(out / "gray_before_after.png").convert("RGB"))
    assert pair.shape == (40, 2 * 60 + 2, 3)
    assert (pair[:, :60] == upright_rgb(photos / "gray.png")).all()  # left: the input as is
    assert (pair[:, -60:] == np.asarray(Image.open(out / "gray.png"))).all()  # right: output


def test_inputs_that_would_share_an_output_name_keep_their_own_extension(
    make_cfg, tmp_path, checkpoint_of
):
    """palette.gif and palette.png would both be written as palette.png: the GIF's output is
    palette.gif.png. A name taken even so (an input already named palette.gif.png) costs the
    renamed input only: the others are written, exit status 1."""
    photos, out = tmp_path / "photos", tmp_path / "out"
    photos.mkdir()
    for name, fmt in (("palette.gif", "GIF"), ("palette.png", "PNG"), ("other.tif", "TIFF")):
        Image.fromarray(colourful(24, 32)).save(photos / name, format=fmt)
    jobs = {job.source.name: job.target.name for job in find_jobs(str(photos), out)}
    assert jobs == {"palette.gif": "palette.gif.png", "palette.png": "palette.png",
                    "other.tif": "other.tif"}  # fmt: skip
    summary = colorize(configure(make_cfg, checkpoint_of("alpha"), photos, out))
    assert summary["failed"] == 0
    assert sorted(p.name for p in out.iterdir()) == ["other.tif", "palette.gif.png", "palette.png"]
    Image.fromarray(colourful(24, 32)).save(photos / "palette.gif.png")
    summary = colorize(configure(make_cfg, checkpoint_of("alpha"), photos, out, "overwrite=true"))
    failure = {str(photos / "palette.gif"): "output name taken by palette.gif.png"}
    assert summary["failed"] == 1 and summary["failures"] == failure
    assert summary["colorized"] == 3


def test_output_may_not_overwrite_inputs_and_names_may_not_collide(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("a.png", "a.jpg"):
        Image.fromarray(colourful(20, 20)).save(photos / name)
    with pytest.raises(ConfigError, match="is the input folder, whose photos would be overwritten"):
        find_jobs(str(photos), photos)
    with pytest.raises(ConfigError, match="is the input folder"):
        find_jobs(str(photos / "a.png"), photos)  # a file: its folder is the input folder
    # An output folder inside the input folder is not read back as input.
    (photos / "out").mkdir()
    Image.fromarray(colourful(20, 20)).save(photos / "out" / "old.png")
    assert {job.source.name for job in find_jobs(str(photos), photos / "out")} == {"a.png", "a.jpg"}
    # An output folder above the input folder is fine: its other files are not looked at.
    jobs = find_jobs(str(photos / "out"), photos)
    assert [(job.source.name, job.target) for job in jobs] == [("old.png", photos / "old.png")]


def test_working_shape_keeps_aspect_for_convolutional_nets_only():
    assert working_shape(3000, 4000, 256, None) == (256, 341)
    assert working_shape(4000, 3000, 256, 256) == (256, 256)  # a fixed-size net: its square


class OutOfMemoryAbove(TorchNetwork):
    """A real network that fails as a GPU out of memory does, on inputs above a pixel budget."""

    budget = 2000

    def __call__(self, l_norm: torch.Tensor) -> torch.Tensor:
        if l_norm.numel() > self.budget:
            raise RuntimeError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return super().__call__(l_norm)


def test_a_failing_batch_is_retried_photo_by_photo(make_cfg, tmp_path, checkpoint_of):
    network = OutOfMemoryAbove(load_model(checkpoint_of("alpha")), torch.device("cpu"))
    photos, out = tmp_path / "photos", tmp_path / "out"
    photos.mkdir()
    for i in range(3):  # 32 x 43 px each at size=32: fine alone, too much as a batch of 3
        Image.fromarray(colourful(30, 40, i)).save(photos / f"{i}.png")
    Image.fromarray(colourful(100, 200)).save(photos / "big.png")  # 32 x 64: too much alone
    cfg = configure(make_cfg, checkpoint_of("alpha"), photos, out, "size=32")
    summary = colorize(cfg, network=network)
    assert (summary["colorized"], summary["failed"]) == (3, 1)
    assert summary["failures"] == {
        str(photos / "big.png"): "out of memory (lower batch_size or size, or use device=cpu)"
    }
    assert sorted(p.name for p in out.iterdir()) == ["0.png", "1.png", "2.png"]


class StripedChroma(ChromaNetwork):
    """A fixed-size (512²) stand-in network whose chroma is one-pixel stripes of a = ±0.5."""

    spec, device = ModelSpec("striped", input_size=512), torch.device("cpu")

    def __call__(self, l_norm: torch.Tensor) -> torch.Tensor:
        stripes = (torch.arange(l_norm.shape[-1]) % 2 * 2 - 1).float() * 0.5
        ab = torch.zeros(l_norm.shape[0], 2, *l_norm.shape[-2:])
        ab[:, 0] = stripes
        return ab


def test_chroma_shrunk_to_a_smaller_photo_is_filtered_not_aliased():
    """A photo smaller than a fixed-size network's input gets the area's average chroma: fine
    stripes average out to gray instead of aliasing into coarse false-colour bands."""
    gray_photo = torch.full((3, 300, 300), 128, dtype=torch.uint8)
    (out,) = colorize_full_resolution(StripedChroma(), [gray_photo], size=256)
    a_channel = rgb2lab(out.permute(1, 2, 0).numpy())[..., 1]
    assert np.abs(a_channel).mean() < 3.0  # aliased: ~25 (of the stripes' 55)
