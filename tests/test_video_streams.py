"""What a film carries besides its pictures: subtitles, audio tracks with their language and
title, the container's title, a QuickTime timecode; what cannot be carried is named in the
summary. Odd-sized films come out 4:2:0, the chroma layout every player takes."""

import json
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch
from skimage import data

from colorizer.video import colorize_video, decode_frames
from colorizer.video_eval import camera_move
from tests.helpers import as_frame

SUBTITLES = (
    "1\n00:00:00,000 --> 00:00:00,400\nThe harbour, 1924\n\n"
    "2\n00:00:00,500 --> 00:00:00,900\nFin\n\n"
)


def frames(count: int = 12, shape: tuple[int, int] = (48, 64)) -> list[torch.Tensor]:
    return camera_move(as_frame(data.astronaut()), count, shape, pan=(1.0, 0.5))


def _video_stream(output: av.container.OutputContainer, **tags: str) -> av.VideoStream:
    encoder = output.add_stream("libx264", rate=12)
    encoder.height, encoder.width = 48, 64
    encoder.pix_fmt = "yuv420p"
    encoder.metadata.update(tags)
    return encoder


def _encode(output: av.container.OutputContainer, encoder: av.VideoStream, count: int) -> None:
    """Encode ``count`` frames of a pan into ``output`` with ``encoder`` (12 frames/s)."""
    for rgb in frames(count):
        frame = av.VideoFrame.from_ndarray(rgb.permute(1, 2, 0).numpy(), "rgb24")
        output.mux(encoder.encode(frame))
    output.mux(encoder.encode(None))


def _audio_stream(output: av.container.OutputContainer, **tags: str) -> av.AudioStream:
    stream = output.add_stream("aac", rate=16000, layout="mono")
    stream.metadata.update(tags)
    return stream


def _encode_tone(output: av.container.OutputContainer, stream: av.AudioStream) -> None:
    tone = (0.2 * np.sin(np.arange(16000) / 16000 * 2 * np.pi * 440))[None].astype(np.float32)
    chunk = av.AudioFrame.from_ndarray(tone, "fltp", "mono")
    chunk.sample_rate = 16000
    output.mux(stream.encode(chunk))
    output.mux(stream.encode(None))


def write_archive_film(path: Path, extra_video: bool = False) -> None:
    """An MKV as an archive keeps it: a title, two audio tracks (French, English commentary),
    English subtitles (read from an .srt file: FFmpeg's subtitle encoders need a header PyAV
    cannot give) and, if asked, a second video stream (an alternative angle)."""
    srt = path.with_suffix(".srt")
    srt.write_text(SUBTITLES)
    with av.open(str(srt)) as subtitles, av.open(str(path), "w") as output:
        output.metadata["title"] = "Reel 1: the harbour"
        text = output.add_stream_from_template(subtitles.streams.subtitles[0])
        text.metadata.update(language="eng", title="English")
        video = _video_stream(output)
        sounds = [_audio_stream(output, language="fre", title="original"),
                  _audio_stream(output, language="eng", title="commentary")]  # fmt: skip
        angle = _video_stream(output) if extra_video else None
        for packet in subtitles.demux():  # every stream is declared before the first packet
            if packet.dts is not None:
                packet.stream = text
                output.mux(packet)
        _encode(output, video, 12)
        for sound in sounds:
            _encode_tone(output, sound)
        if angle is not None:
            _encode(output, angle, 4)


def describe(path: Path) -> dict:
    """Container title, and per stream: type, codec, language and title tags."""
    with av.open(str(path)) as container:
        streams = [
            (s.type, s.codec_context.name if s.codec_context else None,
             s.metadata.get("language"), s.metadata.get("title"))
            for s in container.streams
        ]  # fmt: skip
        return {"title": container.metadata.get("title"), "streams": sorted(streams, key=str)}


def subtitle_packets(path: Path) -> list[tuple[bytes, float]]:
    with av.open(str(path)) as container:
        stream = container.streams.subtitles[0]
        return [(bytes(p), float(p.pts * stream.time_base))
                for p in container.demux(stream) if p.dts is not None]  # fmt: skip


def test_subtitles_audio_tags_and_the_title_are_carried(tmp_path):
    source, target = tmp_path / "reel.mkv", tmp_path / "out" / "reel.mkv"
    write_archive_film(source)
    left: list[str] = []
    assert colorize_video(source, target, lambda clip: clip, not_carried=left) == 12
    assert left == []
    before, after = describe(source), describe(target)
    assert after["title"] == "Reel 1: the harbour"
    assert after == before
    assert ("audio", "aac", "fre", "original") in after["streams"]
    assert ("subtitle", "srt", "eng", "English") in after["streams"]
    texts = subtitle_packets(target)
    assert texts == subtitle_packets(source)
    assert [text for text, _ in texts] == [b"The harbour, 1924", b"Fin"]


def test_a_quicktime_timecode_is_kept(tmp_path):
    source, target = tmp_path / "tape.mov", tmp_path / "out" / "tape.mov"
    with av.open(str(source), "w") as output:
        _encode(output, _video_stream(output, timecode="01:00:00:00"), 6)
    left: list[str] = []
    colorize_video(source, target, lambda clip: clip, not_carried=left)
    with av.open(str(target)) as container:
        assert container.streams.video[0].metadata.get("timecode") == "01:00:00:00"
        (track,) = container.streams.data  # QuickTime's timecode track, written again
        assert track.metadata.get("timecode") == "01:00:00:00"
    assert left == []


def test_what_cannot_be_carried_is_named_in_the_summary(main_of, tmp_path, checkpoint_of):
    inputs = tmp_path / "in"
    inputs.mkdir()
    write_archive_film(inputs / "angles.mkv", extra_video=True)
    args = [f"ckpt_path={checkpoint_of('alpha')}", f"input={inputs}", f"output={tmp_path / 'out'}"]
    result = main_of("colorizer.colorize", *args, "size=64", "hydra.run.dir=run")
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    note = "video stream #4 (h264): only the first video stream is colorized"
    assert summary["not_carried"] == {str(inputs / "angles.mkv"): [note]}
    assert f"not carried from {inputs / 'angles.mkv'}: {note}" in result.stderr
    # Everything else was.
    kinds = [kind for kind, *_ in describe(tmp_path / "out" / "angles.mkv")["streams"]]
    assert sorted(kinds) == ["audio", "audio", "subtitle", "video"]


def test_an_odd_sized_film_is_written_4_2_0(tmp_path):
    """4:2:0 halves the chroma planes, so H.264 needs even sizes: the picture is padded by
    one column and row repeated (63 x 45 -> 64 x 46); WebM's VP9 keeps odd sizes as they are."""
    clip = [frame[:, :45, :63] for frame in frames(3)]
    for suffix, size in ((".mp4", (46, 64)), (".mkv", (46, 64)), (".webm", (45, 63))):
        source, target = tmp_path / f"odd{suffix}", tmp_path / "out" / f"odd{suffix}"
        with av.open(str(source), "w") as output:
            encoder = output.add_stream("libx264" if suffix != ".webm" else "libvpx-vp9", rate=12)
            encoder.width, encoder.height, encoder.pix_fmt = 63, 45, "yuv444p"
            if suffix == ".webm":
                encoder.pix_fmt = "yuv420p"
            for rgb in clip:
                frame = av.VideoFrame.from_ndarray(
                    rgb.permute(1, 2, 0).contiguous().numpy(), "rgb24"
                )
                output.mux(encoder.encode(frame))
            output.mux(encoder.encode(None))
        colorize_video(source, target, lambda frames: frames)
        with av.open(str(target)) as container:
            frame = next(container.decode(video=0))
            assert (frame.format.name, (frame.height, frame.width)) == ("yuv420p", size)
        out = decode_frames(target)[0]
        picture = out[:, :45, :63].float()
        assert (picture - decode_frames(source)[0].float()).abs().mean() < 4
        if size != (45, 63):  # the padding repeats the last column and row
            assert (out[:, :45, 63].float() - out[:, :45, 62].float()).abs().mean() < 4
            assert (out[:, 45, :63].float() - out[:, 44, :63].float()).abs().mean() < 4


def test_frame_rate_fraction_survives(tmp_path):
    """NTSC's 30000/1001 stays 30000/1001 (not 29.97 rounded to 30)."""
    source, target = tmp_path / "ntsc.mp4", tmp_path / "out" / "ntsc.mp4"
    with av.open(str(source), "w") as output:
        encoder = output.add_stream("libx264", rate=Fraction(30000, 1001))
        encoder.height, encoder.width, encoder.pix_fmt = 48, 64, "yuv420p"
        for rgb in frames(6):
            frame = av.VideoFrame.from_ndarray(rgb.permute(1, 2, 0).numpy(), "rgb24")
            output.mux(encoder.encode(frame))
        output.mux(encoder.encode(None))
    colorize_video(source, target, lambda clip: clip)
    with av.open(str(target)) as container:
        assert container.streams.video[0].average_rate == Fraction(30000, 1001)
