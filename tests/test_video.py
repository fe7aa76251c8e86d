"""Videos: colorize keeps size, rate, length, audio and L; flow stabilisation halves flicker
without costing PSNR and stops at cuts; bad videos fail one line each, leaving nothing."""

import json
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data
from skimage.color import rgb2lab

from colorizer.color import lab_to_rgb, rgb_to_lab
from colorizer.colorize import colorize
from colorizer.errors import ConfigError
from colorizer.evaluate import evaluate
from colorizer.flow import lightness_u8
from colorizer.inference import full_lightness, open_network
from colorizer.video import (
    FrameColorizer,
    VideoError,
    colorize_video,
    decode_frames,
    write_video,
)
from colorizer.video_eval import camera_move
from colorizer.warping_error import WarpingError, consistent_pixels, farneback_flow
from tests.helpers import QUICK, as_frame, train_run

SHAPE = (96, 128)  # frames of 128 x 96 px
SHOT = 8  # frames per shot; the cut is at frame 8
RATE = 12
SIZE = ["size=64"]  # working size: small, so the tests stay fast
# alpha trained long enough (150 steps, ~10 s) to colour shapes and textures: its predictions
# on real photographs are colourful and, blocky at its 8-pixel stride, flicker under a pan.
FLICKERY = ["model=alpha", "model.optimizer=adam", "model.lr=3e-3", *QUICK, "data.image_size=32"]
FLICKERY += ["trainer.max_steps=150", "trainer.val_check_interval=150", "data.num_val=16"]
FLICKERY += ["data.num_test=16"]


@pytest.fixture(scope="module")
def two_shots() -> list[torch.Tensor]:
    """16 frames of two shots over real photographs: a diagonal pan over the astronaut, a cut,
    then a zooming pan over a cup of coffee."""
    first = camera_move(as_frame(data.astronaut()), SHOT, SHAPE, pan=(1.7, 0.6))
    second = camera_move(as_frame(data.coffee()), SHOT, SHAPE, pan=(-1.0, 0.3), zoom=1.03)
    return first + second


@pytest.fixture(scope="module")
def flickery_alpha(tmp_path_factory) -> Path:
    """The best checkpoint of a small alpha that colours, trained by colorizer.run."""
    run = tmp_path_factory.mktemp("flickery-alpha")
    return Path(train_run(run, FLICKERY)["best_checkpoint"])


def beep(seconds: float, rate: int = 16000) -> tuple[torch.Tensor, int]:
    """A mono 440 Hz tone: float ``[1, n]`` samples and the sample rate."""
    time = torch.arange(int(seconds * rate)) / rate
    return (0.3 * torch.sin(2 * torch.pi * 440 * time))[None], rate


def lightness(frames: list[torch.Tensor]) -> np.ndarray:
    """CIE L of uint8 frames by scikit-image (not colorizer's kornia): ``[N, H, W]``."""
    return np.stack([rgb2lab(f.permute(1, 2, 0).numpy() / 255.0)[..., 0] for f in frames])


def write_bad_videos(folder: Path, good: Path) -> dict[str, str]:
    """Broken inputs next to a good film; returns name -> the reason colorize must give."""
    folder.mkdir(parents=True, exist_ok=True)
    intact = good.read_bytes()
    (folder / "truncated.mp4").write_bytes(intact[: len(intact) // 2])  # its index is at the end
    (folder / "random.mp4").write_bytes(np.random.default_rng(0).bytes(4000))
    with av.open(str(folder / "sound_only.mp4"), "w") as output:
        stream = output.add_stream("aac", rate=16000, layout="mono")
        chunk = av.AudioFrame.from_ndarray(beep(0.5)[0].numpy(), "fltp", "mono")
        chunk.sample_rate = 16000
        output.mux(stream.encode(chunk))
        output.mux(stream.encode(None))
    # A codec FFmpeg has no decoder for: an MJPEG AVI whose FourCC is renamed.
    mjpeg = folder / "unknown_codec.avi"
    with av.open(str(mjpeg), "w") as output:
        stream = output.add_stream("mjpeg", rate=RATE)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuvj420p"
        for _ in range(3):
            frame = av.VideoFrame.from_ndarray(np.zeros((32, 32, 3), np.uint8), "rgb24")
            output.mux(stream.encode(frame))
        output.mux(stream.encode(None))
    mjpeg.write_bytes(mjpeg.read_bytes().replace(b"MJPG", b"QQQQ"))
    return {
        "truncated.mp4": "truncated, corrupt or not a video",
        "random.mp4": "truncated, corrupt or not a video",
        "sound_only.mp4": "no video stream",
        "unknown_codec.avi": "unsupported video codec",
    }


def test_films_in_a_folder_keep_size_rate_length_audio_and_luminance(
    main_of, tmp_path, checkpoint_of, two_shots
):
    inputs, out = tmp_path / "inputs", tmp_path / "out"
    inputs.mkdir()
    film = inputs / "film.mp4"
    write_video(film, two_shots[:SHOT], rate=RATE, audio=beep(1.0))
    write_video(inputs / "odd_size.mkv", [f[:, :45, :63] for f in two_shots[:3]], rate=25)
    Image.fromarray(two_shots[0].permute(1, 2, 0).numpy()).save(inputs / "still.png")
    bad = write_bad_videos(inputs / "broken", film)
    args = [f"ckpt_path={checkpoint_of('alpha')}", f"input={inputs}", f"output={out}"]
    result = main_of("colorizer.colorize", *args, *SIZE, "batch_size=5", "hydra.run.dir=run")

    assert result.returncode == 1, result.stderr  # some inputs failed
    assert "Traceback" not in result.stderr
    for name, reason in bad.items():  # one line each
        assert f"failed: {inputs / 'broken' / name}: {reason}\n" in result.stderr
    assert "colorized 3 of 7, skipped 0, failed 4 (" in result.stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert (summary["videos"], summary["frames"]) == (6, SHOT + 3)
    # Nothing for the failures, no hidden partial files.
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*"))
    assert written == ["film.mp4", "odd_size.mkv", "still.png"]

    with av.open(str(film)) as before, av.open(str(out / "film.mp4")) as after:
        video_in, video_out = before.streams.video[0], after.streams.video[0]
        for attribute in ("width", "height", "average_rate", "frames", "duration"):
            assert getattr(video_out, attribute) == getattr(video_in, attribute), attribute
        (audio_in,), (audio_out,) = before.streams.audio, after.streams.audio
        assert (audio_out.codec_context.name, audio_out.rate) == ("aac", 16000)
        assert audio_out.frames == audio_in.frames and audio_out.duration == audio_in.duration
        packets_in = [bytes(p) for p in before.demux(audio_in) if p.size]
        packets_out = [bytes(p) for p in after.demux(audio_out) if p.size]
        assert packets_out == packets_in  # copied, not re-encoded
    frames_in, frames_out = decode_frames(film), decode_frames(out / "film.mp4")
    assert len(frames_out) == len(frames_in) == SHOT
    # L is the input's up to the encoder: H.264 at crf 17 quantises, and 4:2:0 stores chroma
    # at half resolution, which moves L at colour edges. Measured: mean 0.6, 99th percentile
    # 2.5 L units on these frames; an L taken from anywhere else is off by tens.
    error = np.abs(lightness(frames_out) - lightness(frames_in))
    assert error.mean() < 1.0 and np.percentile(error, 99) < 4.0
    colour = np.hypot(*np.moveaxis(rgb2lab(frames_out[4].permute(1, 2, 0).numpy())[..., 1:], -1, 0))
    assert colour.mean() > 2.0  # it is colorized, not gray
    odd = decode_frames(out / "odd_size.mkv")
    assert len(odd) == 3 and odd[0].shape == (3, 46, 64)  # padded to even for 4:2:0


@pytest.mark.slow
def test_flow_halves_flicker_keeps_psnr_and_stops_at_the_cut(
    make_cfg, tmp_path, flickery_alpha, two_shots
):
    clip = tmp_path / "videos" / "two_shots.mp4"
    clip.parent.mkdir()
    write_video(clip, two_shots, rate=RATE)
    cfg = make_cfg(f"ckpt_path={flickery_alpha}", f"videos={clip.parent}",
                   "size=64", "batch_size=8", config_name="evaluate")  # fmt: skip
    summary = evaluate(cfg)
    assert summary["cuts"] == {str(clip): [SHOT]}  # the cut, and no pan or zoom step
    assert (summary["num_frames"], summary["num_frame_pairs"]) == (16, 14)
    errors = {row: summary[f"video/{row}warping_error"] for row in ("", "flow_", "gray_", "truth_")}
    # What colour adds to the flicker of the same L, written the same way (the gray baseline):
    # flow at least halves it.
    per_frame, flow = errors[""] - errors["gray_"], errors["flow_"] - errors["gray_"]
    assert 0 < flow <= 0.5 * per_frame, errors
    assert summary["video/flow_psnr"] >= summary["video/psnr"] - 0.3
    assert errors["gray_"] < errors["truth_"], errors
    assert summary["video/gray_warping_error_per_cf"] is None  # no colour to divide by
    assert summary["video/flow_warping_error_per_cf"] < summary["video/warping_error_per_cf"]
    report = (tmp_path / "run" / "report.md").read_text()
    assert "| model, temporal=flow |" in report and "| gray baseline |" in report

    # No colour crosses the cut: the first frame of the second shot is its own prediction.
    network = open_network(flickery_alpha)
    stabilised = FrameColorizer(network, 64, "flow")
    flow_frames = stabilised(two_shots[:SHOT]) + stabilised(two_shots[SHOT:])
    fresh = FrameColorizer(network, 64, "none")(two_shots)
    assert stabilised.cuts == [SHOT]
    assert torch.equal(flow_frames[SHOT], fresh[SHOT])
    assert not torch.equal(flow_frames[SHOT + 1], fresh[SHOT + 1])  # then stabilised again


def test_warping_error_counts_flicker_and_not_motion(two_shots):
    """Lai et al.'s warping error: the true clip moves but hardly flickers; the same clip with
    a jumping by ±4 from frame to frame adds, pair by pair, the squared RGB distance between
    a + 4 and a - 4 (measured 3.15e-3 against 3.18e-3 computed without any flow)."""
    meter, jump = WarpingError(), []
    lightness = full_lightness(two_shots, torch.device("cpu"))
    for i, (frame, l_full) in enumerate(zip(two_shots, lightness, strict=True)):
        lab = rgb_to_lab(frame[None])
        shift = torch.tensor([0.0, 4.0, 0.0]).view(1, 3, 1, 1)
        plus, minus = (lab_to_rgb(lab + sign * shift)[0].clamp(0, 1) for sign in (1, -1))
        jump.append(float((plus - minus).square().sum(0).mean()))
        jumpy = plus if i % 2 else minus
        versions = {"truth": frame.float() / 255, "jumpy": jumpy}
        meter.update(
            lightness_u8(l_full), {k: v.permute(1, 2, 0).numpy() for k, v in versions.items()}
        )
    errors = meter.errors()
    assert meter.cuts == [SHOT] and meter.pairs == 2 * SHOT - 2
    assert errors["truth"] < 1.5e-3
    assert errors["jumpy"] - errors["truth"] == pytest.approx(np.mean(jump), rel=0.15)


def test_the_occlusion_test_leaves_out_what_leaves_the_picture():
    """A picture moved 3 px right and 2 down: the flow finds it, every pixel that stays in the
    picture is kept, and those that leave it over the right edge are left out."""
    (l_norm,) = full_lightness([as_frame(data.astronaut())[:, ::4, ::4].contiguous()],
                               torch.device("cpu"))  # fmt: skip
    before = lightness_u8(l_norm)
    after = np.roll(before, (2, 3), axis=(0, 1))
    forward = farneback_flow(before, after)
    kept = consistent_pixels(forward, farneback_flow(after, before))
    assert np.median(forward, axis=(0, 1)) == pytest.approx([3.0, 2.0], abs=0.05)
    assert kept[10:-10, 10:-10].all()  # (np.roll wraps the edges round: those do not match)
    assert kept[:, -3:].mean() < 0.1


def test_bad_video_options_are_refused(make_cfg, tmp_path, checkpoint_of):
    common = [f"ckpt_path={checkpoint_of('alpha')}", f"input={tmp_path}", "output=out"]
    with pytest.raises(ConfigError, match="temporal=smooth is not one of: flow, none"):
        colorize(make_cfg(*common, "temporal=smooth", config_name="colorize"))
    with pytest.raises(ConfigError, match="crf=-1 must be an integer >= 0"):
        colorize(make_cfg(*common, "crf=-1", config_name="colorize"))


def _write_anamorphic(path: Path, frames: list[torch.Tensor], aspect: Fraction) -> None:
    """An H.264 clip whose pixels are not square (a DVD's 64:45, say)."""
    with av.open(str(path), "w") as output:
        encoder = output.add_stream("libx264", rate=12)
        encoder.height, encoder.width = frames[0].shape[1:]
        encoder.pix_fmt = "yuv420p"
        encoder.codec_context.sample_aspect_ratio = aspect
        for rgb in frames:
            frame = av.VideoFrame.from_ndarray(rgb.permute(1, 2, 0).numpy(), "rgb24")
            output.mux(encoder.encode(frame))
        output.mux(encoder.encode(None))


def test_the_pixel_aspect_ratio_of_an_anamorphic_film_is_kept(two_shots, tmp_path):
    source, target = tmp_path / "dvd.mp4", tmp_path / "out" / "dvd.mp4"
    _write_anamorphic(source, two_shots[:6], Fraction(64, 45))
    assert colorize_video(source, target, lambda frames: frames) == 6
    with av.open(str(target)) as container:
        assert container.streams.video[0].codec_context.sample_aspect_ratio == Fraction(64, 45)


def test_an_avi_film_reads_back_whole(two_shots, tmp_path):
    """H.264 B-frames in AVI scramble the timestamps: the output could not be read back."""
    source, target = tmp_path / "old.avi", tmp_path / "out" / "old.avi"
    write_video(source, two_shots[:12])
    assert colorize_video(source, target, lambda frames: frames) == 12
    assert len(decode_frames(target)) == 12
    with av.open(str(target)) as container:
        timestamps = [frame.pts for frame in container.decode(video=0)]
    assert timestamps == sorted(timestamps) and len(set(timestamps)) == 12


def test_a_variable_frame_rate_mkv_is_whole_not_truncated(two_shots, tmp_path):
    """12 frames over 1.4 s, irregularly spaced: duration x average rate predicts more frames
    than there are, which is no truncation."""
    source, target = tmp_path / "phone.mkv", tmp_path / "out" / "phone.mkv"
    times_ms = [0, 50, 100, 300, 350, 400, 700, 750, 800, 1100, 1150, 1300]
    with av.open(str(source), "w") as output:
        encoder = output.add_stream("libx264", rate=10)
        encoder.height, encoder.width = two_shots[0].shape[1:]
        encoder.pix_fmt = "yuv420p"
        encoder.time_base = encoder.codec_context.time_base = Fraction(1, 1000)
        for rgb, time in zip(two_shots, times_ms, strict=False):
            frame = av.VideoFrame.from_ndarray(rgb.permute(1, 2, 0).numpy(), "rgb24")
            frame.pts, frame.time_base = time, Fraction(1, 1000)
            output.mux(encoder.encode(frame))
        output.mux(encoder.encode(None))
    assert len(decode_frames(source)) == 12
    assert colorize_video(source, target, lambda frames: frames) == 12
    with av.open(str(target)) as container:
        stream = container.streams.video[0]
        pts = [float(frame.pts * stream.time_base) for frame in container.decode(stream)]
    assert pts == pytest.approx([t / 1000 for t in times_ms], abs=1e-3)  # timestamps kept
    cut = tmp_path / "cut.mkv"  # the same film with its last 40 % missing is truncated
    cut.write_bytes(source.read_bytes()[: int(source.stat().st_size * 0.6)])
    with pytest.raises(VideoError, match="truncated or corrupt"):
        decode_frames(cut)


def test_a_phone_clip_is_colorized_upright_and_keeps_its_rotation(two_shots, tmp_path):
    """A portrait phone clip is stored sideways with a display rotation of -90 degrees (players
    turn it 90 degrees clockwise): the network must see it upright, and the output must keep
    the stored pixels and the tag, so it plays upright too."""
    upright = two_shots[:4]  # 96 x 128, not square: sideways shows
    stored = [torch.rot90(frame, k=1, dims=(1, 2)) for frame in upright]  # turned left
    source, target = tmp_path / "phone.mp4", tmp_path / "out" / "phone.mp4"
    with av.open(str(source), "w") as output:
        encoder = output.add_stream("libx264", rate=12)
        encoder.height, encoder.width = stored[0].shape[1:]
        encoder.pix_fmt = "yuv444p"
        encoder.options = {"crf": "0"}
        encoder.set_display_rotation(-90)
        for rgb in stored:
            frame = av.VideoFrame.from_ndarray(rgb.permute(1, 2, 0).contiguous().numpy(), "rgb24")
            output.mux(encoder.encode(frame))
        output.mux(encoder.encode(None))
    seen = []

    def network(frames):
        seen.extend(frames)
        return frames

    assert colorize_video(source, target, network) == 4
    assert seen[0].shape == upright[0].shape
    assert (seen[0].float() - upright[0].float()).abs().mean() < 3  # lossless but for RGB->YUV
    with av.open(str(target)) as container:
        frame = next(container.decode(video=0))
    assert frame.rotation == -90 and (frame.height, frame.width) == tuple(stored[0].shape[1:])
    assert decode_frames(target)[0].shape == upright[0].shape  # decoded upright, as shown


def test_a_film_damaged_near_its_end_keeps_what_was_colorized(two_shots, tmp_path):
    """A cut Matroska film (its index up front, the end missing): the frames before the damage
    are written as NAME.incomplete.mkv, never under the name of a complete film."""
    whole = tmp_path / "whole.mkv"
    write_video(whole, two_shots)
    cut = tmp_path / "reel.mkv"
    cut.write_bytes(whole.read_bytes()[: int(whole.stat().st_size * 0.7)])
    target = tmp_path / "out" / "reel.mkv"
    with pytest.raises(
        VideoError,
        match=r"truncated or corrupt after \d+ frames \(.* s\): those are in reel.incomplete",
    ):
        colorize_video(cut, target, lambda frames: frames, batch_size=4)
    assert not target.exists()
    kept = count_frames(tmp_path / "out" / "reel.incomplete.mkv")
    assert 4 <= kept < len(two_shots)


def count_frames(path: Path) -> int:
    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(video=0))


@pytest.mark.parametrize(("shape", "matrix"), [((720, 1280), "bt709"), ((96, 128), "smpte170m")])
def test_colour_is_converted_and_tagged_as_players_read_it(tmp_path, shape, matrix):
    """HD is BT.709, SD BT.601 (what players assume untagged), limited range, tagged: decoded
    as tagged, the output's L is the input's up to the encoder."""
    frames = camera_move(as_frame(data.astronaut()), 3, shape, pan=(1.0, 0.0))
    source, target = tmp_path / "in.mp4", tmp_path / "out" / "in.mp4"
    write_video(source, frames)
    colorize_video(source, target, lambda frames: frames)
    with av.open(str(target)) as container:
        frame = next(container.decode(video=0))
        tags = (frame.colorspace, frame.color_range, frame.color_primaries, frame.color_trc)
    expected = {"bt709": (1, 1, 1, 1), "smpte170m": (6, 1, 6, 6)}[matrix]
    assert tuple(int(tag) for tag in tags) == expected
    out = lightness(decode_frames(target))  # one encoding from the decoded input
    assert np.abs(out - lightness(decode_frames(source))).mean() < 1.0


def test_a_film_that_names_its_colour_standard_keeps_it(tmp_path):
    """An SD film tagged BT.709 (as some camcorders write) is read and written as BT.709."""
    frames = camera_move(as_frame(data.astronaut()), 2, (96, 128), pan=(1.0, 0.0))
    source, target = tmp_path / "cam.mp4", tmp_path / "out" / "cam.mp4"
    with av.open(str(source), "w") as output:
        encoder = output.add_stream("libx264", rate=12)
        encoder.height, encoder.width = 96, 128
        encoder.pix_fmt = "yuv420p"
        context = encoder.codec_context
        context.colorspace = context.color_primaries = context.color_trc = 1
        context.color_range = 1
        for rgb in frames:
            frame = av.VideoFrame.from_ndarray(rgb.permute(1, 2, 0).numpy(), "rgb24")
            frame = frame.reformat(format="yuv420p", dst_colorspace="ITU709", dst_color_range=1)
            frame.colorspace = 1
            output.mux(encoder.encode(frame))
        output.mux(encoder.encode(None))
    colorize_video(source, target, lambda frames: frames)
    with av.open(str(target)) as container:
        assert int(next(container.decode(video=0)).colorspace) == 1
    out, given = lightness(decode_frames(target)), lightness(decode_frames(source))
    assert np.abs(out - given).mean() < 1.0
