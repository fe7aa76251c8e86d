"""colorizer.colorize: full-resolution outputs, luminance kept, bad files counted, exit status."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from skimage.color import rgb2lab

from colorizer.color import AB_SCALE, denormalize_l
from colorizer.colorize import colorize
from colorizer.errors import ConfigError
from colorizer.full_resolution import merge_in_strips, strip_lightness, working_lightness
from colorizer.inference import (
    ChromaNetwork,
    TorchNetwork,
    colorize_full_resolution,
    full_lightness,
    merge_full_resolution,
    working_chroma,
    working_shape,
)
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
    # overwrite=true redoes them: a damaged output is replaced by the photo colorized again.
    colorized = np.asarray(Image.open(out / "scan.jpg"))
    Image.new("RGB", (257, 131)).save(out / "scan.jpg")
    redo = [*common, f"input={photos}/scans/*.png", "format=jpg", "overwrite=true"]
    redone = main_of("colorizer.colorize", *redo)
    assert redone.returncode == 0, redone.stderr
    assert "colorized 2 of 2, skipped 0, failed 0" in redone.stderr
    assert np.array_equal(np.asarray(Image.open(out / "scan.jpg")), colorized)


def test_usage_errors_are_one_line_with_status_2(main_of, tmp_path, checkpoint_of):
    result = main_of(
        "colorizer.colorize", f"ckpt_path={checkpoint_of('alpha')}", "input=nowhere", "output=out"
    )
    assert_one_line_error(result, "input=nowhere does not exist")
    assert not (tmp_path / "out").exists()


def assert_chroma_is_the_networks(
    network: ChromaNetwork, size: int, source: Path, output: Path
) -> None:
    """The output's a and b (CIE Lab by scikit-image) are the network's prediction for the
    photo's L at working size ``size``, upsampled: its colours, each of a and b in its place.
    Compared by the median pixel: colours outside the sRGB gamut at their L are desaturated."""
    image = torch.from_numpy(upright_rgb(source)).permute(2, 0, 1)
    (lightness,) = full_lightness([image], network.device)
    (ab,) = working_chroma(network, [lightness], size)
    full = F.interpolate(ab, size=lightness.shape[-2:], mode="bilinear", antialias=True)
    predicted = full[0].permute(1, 2, 0).numpy() * AB_SCALE
    produced = rgb2lab(np.asarray(Image.open(output).convert("RGB")) / 255.0)[..., 1:]
    median_error = np.median(np.abs(produced - predicted), axis=(0, 1))
    assert (median_error < 0.5).all(), f"{output.name}: a, b off by {median_error} (median)"


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
    network = TorchNetwork(load_model(checkpoint_of(name)), torch.device("cpu"))
    for file, size in (("wide.png", (150, 97)), ("tall_gray.png", (64, 301))):
        output = tmp_path / "out" / file
        assert Image.open(output).size == size
        assert np.percentile(lightness_error(photos / file, output), 99) < 1.0
        assert_chroma_is_the_networks(network, summary["size"], photos / file, output)


def test_device_and_precision_choices(make_cfg, tmp_path, checkpoint_of):
    """Without a GPU, device=auto is the CPU and precision=auto is float32 there: the same
    pixels as device=cpu precision=32. precision=bf16 runs the network in bfloat16: colours
    a little off float32's, the photo's L kept all the same (Lab is float32 in both)."""
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(colourful(60, 80)).save(photos / "photo.png")
    outputs = {}
    for options in (("device=cpu", "precision=32"), ("device=auto", "precision=auto"),
                    ("device=cpu", "precision=bf16")):  # fmt: skip
        out = tmp_path / "_".join(option.split("=")[1] for option in options)
        summary = colorize(configure(make_cfg, checkpoint_of("alpha"), photos, out, *options))
        assert (summary["colorized"], summary["device"]) == (1, "cpu")
        outputs[options[1]] = np.asarray(Image.open(out / "photo.png")).astype(int)
        assert np.percentile(lightness_error(photos / "photo.png", out / "photo.png"), 99) < 1
    assert np.array_equal(outputs["precision=auto"], outputs["precision=32"])
    bf16_error = np.abs(outputs["precision=bf16"] - outputs["precision=32"])
    assert bf16_error.max() > 0 and bf16_error.mean() < 1, bf16_error.mean()


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


class ConstantChroma(ChromaNetwork):
    """A fully convolutional stand-in network that predicts one colour: a = 33, b = -22."""

    spec, device = ModelSpec("constant"), torch.device("cpu")
    ab = (0.3, -0.2)  # normalised: x 110

    def __call__(self, l_norm: torch.Tensor) -> torch.Tensor:
        ab = torch.tensor(self.ab).view(1, 2, 1, 1)
        return ab.expand(l_norm.shape[0], 2, *l_norm.shape[-2:]).clone()


@pytest.mark.parametrize("merge", ["photo", "video frames"])
def test_the_predicted_chroma_is_merged_with_the_photos_lightness(merge):
    """A mid-gray photo (L 54) coloured a = 33, b = -22 (a violet well inside the sRGB gamut):
    the output is that colour at the photo's L, at full size. Photos are merged in strips,
    a video's frames (and the hints page's preview) as whole batches."""
    gray_photo = torch.full((3, 50, 70), 128, dtype=torch.uint8)
    if merge == "photo":
        (out,) = colorize_full_resolution(ConstantChroma(), [gray_photo], size=16)
    else:
        (lightness,) = full_lightness([torch.stack([gray_photo] * 2)], torch.device("cpu"))
        chroma = ConstantChroma()(lightness[..., :12, :17])  # at a working size
        first, second = merge_full_resolution(lightness, chroma)
        assert torch.equal(first, second)
        out = first
    assert out.shape == (3, 50, 70) and out.dtype == torch.uint8
    lab = rgb2lab(out.permute(1, 2, 0).numpy())
    expected = [rgb2lab(np.full((1, 1, 3), 128, np.uint8))[0, 0, 0], 33.0, -22.0]
    mean = lab.reshape(-1, 3).mean(axis=0).round(2)
    assert np.abs(lab - expected).max() < 1.0, f"Lab {mean} on average, not {expected}"


@pytest.mark.parametrize("merge", ["photo", "video frames"])
def test_colours_too_strong_for_a_lightness_are_desaturated_not_clipped(merge):
    """White stays white, and near-white (L 96) cannot hold a = 33, b = -22: the colour keeps
    its L and its hue, with less chroma, whichever merge makes it."""
    photo = torch.full((3, 6, 8), 245, dtype=torch.uint8)
    photo[:, :3] = 255
    if merge == "photo":
        (out,) = colorize_full_resolution(ConstantChroma(), [photo], size=4)
    else:
        (lightness,) = full_lightness([photo], torch.device("cpu"))
        assert lightness.shape == (1, 1, 6, 8)
        (out,) = merge_full_resolution(lightness, ConstantChroma()(lightness[..., :3, :4]))
    lab = rgb2lab(out.permute(1, 2, 0).numpy())
    l_error = np.abs(lab[..., 0] - rgb2lab(photo.permute(1, 2, 0).numpy())[..., 0])
    assert l_error.max() < 0.5, l_error.max()
    near_white = lab[3:, :, 1:].reshape(-1, 2)
    assert (near_white[:, 0] > 1).all() and (near_white[:, 1] < 0).all()  # violet still
    assert (np.hypot(*near_white.T) < 0.8 * np.hypot(33.0, 22.0)).all()


@pytest.mark.parametrize("kind", ["RGB", "gray", "16-bit gray"])
def test_a_photo_merged_in_strips_has_its_own_l_and_the_upsampled_chroma(kind):
    """Strips of 4 rows of a 37 x 29 photo: each pixel has the photo's L (scikit-image's Lab)
    and the chroma that bilinear upsampling of the whole prediction gives there. A 16-bit
    photo stays 16-bit."""
    rgb = colourful(37, 29)
    gray = rgb[None, ..., 1] // 2 + 64  # mid tones: every colour of the ramp is in gamut
    photo = {
        "RGB": torch.from_numpy(rgb).permute(2, 0, 1).contiguous(),
        "gray": torch.from_numpy(gray),
        "16-bit gray": torch.from_numpy(gray.astype(np.int32) * 257 + 99).to(torch.uint16),
    }[kind]
    photo[..., :2, :] = 65535 if kind == "16-bit gray" else 255  # white: no room for colour
    top = 65535.0 if kind == "16-bit gray" else 255.0
    ramp = torch.linspace(-0.15, 0.15, 20).view(1, 1, 5, 4)
    ab = torch.cat([ramp, ramp.flip(-1).transpose(-1, -2).reshape(1, 1, 5, 4)], dim=1)
    out = merge_in_strips(photo, ab, strip_pixels=29 * 4)
    assert out.shape == (3, 37, 29) and out.dtype == photo.dtype
    lab = rgb2lab(out.permute(1, 2, 0).numpy().astype(np.float64) / top)
    source = photo.expand(3, -1, -1).permute(1, 2, 0).numpy().astype(np.float64) / top
    l_error = np.abs(lab[..., 0] - rgb2lab(source)[..., 0])
    assert l_error.max() < (0.6 if top == 255.0 else 0.01), l_error.max()
    upsampled = F.interpolate(ab, size=(37, 29), mode="bilinear")[0].permute(1, 2, 0) * AB_SCALE
    ab_error = np.abs(lab[..., 1:] - upsampled.numpy())
    assert np.median(ab_error[2:]) < 0.5 and np.percentile(ab_error[2:], 99) < 1.5, ab_error.max()


def test_a_16_bit_colour_photos_l_is_read_at_16_bits():
    """Each channel's 16 bits count: the L of a 16-bit RGB strip equals scikit-image's to
    float32 rounding (1.3e-5 measured; reading 65536 for 65535 would be off by 1.3e-3)."""
    deep = (np.random.default_rng(0).random((16, 16, 3)) * 65535).astype(np.uint16)
    deep[0, :4] = 65535
    photo = torch.from_numpy(deep).permute(2, 0, 1).contiguous()
    lightness = denormalize_l(strip_lightness(photo, slice(0, 16), torch.device("cpu")))
    truth = rgb2lab(deep / 65535.0)[..., 0]
    assert np.abs(lightness[0, 0].numpy() - truth).max() < 1e-4


def test_the_network_sees_the_photos_l_resized_whole_however_it_is_read():
    """Read in strips of 4 rows, the working-size L is the whole L plane (scikit-image's Lab)
    resized (bilinear, antialiased)."""
    photo = torch.from_numpy(colourful(37, 29)).permute(2, 0, 1).contiguous()
    small = working_lightness(photo, (12, 9), torch.device("cpu"), strip_pixels=29 * 4)
    whole = torch.from_numpy(rgb2lab(photo.permute(1, 2, 0).numpy())[..., 0]).float()
    expected = F.interpolate(whole[None, None] / 50 - 1, size=(12, 9), mode="bilinear",
                             antialias=True)  # fmt: skip
    torch.testing.assert_close(small, expected, atol=1e-3, rtol=0)


@pytest.mark.parametrize("size", [(300, 300), (600, 300)])
def test_chroma_shrunk_to_a_smaller_photo_is_filtered_not_aliased(size):
    """A photo narrower than a fixed-size network's input (and shorter, or taller) gets the
    area's average chroma: fine stripes average out to gray instead of aliasing into coarse
    false-colour bands."""
    gray_photo = torch.full((3, *size), 128, dtype=torch.uint8)
    (out,) = colorize_full_resolution(StripedChroma(), [gray_photo], size=256)
    a_channel = rgb2lab(out.permute(1, 2, 0).numpy())[..., 1]
    assert np.abs(a_channel).mean() < 3.0  # aliased: ~25 (of the stripes' 55)
