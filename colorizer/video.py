"""Videos for ``colorizer.colorize``: decoding and encoding with PyAV, frames colorized in
batches, temporal consistency, the audio copied, atomic writes.

A video is read packet by packet: video frames are colorized ``batch_size`` at a time (each
with its own full-resolution L, as photos are) and encoded at once, and the audio packets
are copied as they are (no re-encoding) into the output, which has the input's container,
size, frame timestamps (so frame rate and length) and audio. The output is written to a
hidden file next to the target and renamed when complete: a video that fails to decode
halfway, or to encode, leaves nothing behind.

Encoding: H.264 (libx264, ``crf``) in every container but WebM, which takes VP9; 4:2:0
chroma, which players expect: an odd-sized picture is padded to even sizes for H.264 by
repeating its last column or row (VP9 keeps odd sizes). The encoder rounds, so the output's L
is the input's up to the codec's loss (about 1 L unit at ``crf=17``). Subtitle streams and
every tag (titles, languages, a timecode) are carried as the audio is.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from fractions import Fraction
from pathlib import Path

import av
import av.error
import torch
from av.video.reformatter import ColorRange, Colorspace

from colorizer.flow import ChromaStabiliser
from colorizer.inference import (
    ChromaNetwork,
    full_lightness,
    merge_full_resolution,
    resize_planes,
    working_chroma,
)

TEMPORAL = ("flow", "none")
_ENCODERS = {".webm": "libvpx-vp9"}  # WebM holds only VP8/VP9/AV1; elsewhere libx264
UNREADABLE = "truncated, corrupt or not a video"  # what FFmpeg's demuxers cannot tell apart
# Frames short of what the header announces before a video counts as truncated.
_MISSING_FRAMES_ALLOWED = 1.5


class VideoError(Exception):
    """A video that cannot be read; ``reason`` is one short phrase for the summary."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class FrameColorizer:
    """Colorizes one clip's frames in order, a batch at a time, keeping temporal state.

    ``temporal="flow"`` stabilises each frame's chroma against the previous frames
    (``colorizer.flow.ChromaStabiliser``) at the network's working size, before it is
    resized to the frame's; ``"none"`` colorizes every frame on its own, like a photo.
    """

    def __init__(self, network: ChromaNetwork, size: int, temporal: str = "flow"):
        if temporal not in TEMPORAL:
            raise ValueError(f"temporal={temporal} is not one of: {', '.join(TEMPORAL)}")
        self.network, self.size = network, size
        self.stabiliser = ChromaStabiliser() if temporal == "flow" else None

    @torch.no_grad()
    def __call__(self, frames: list[torch.Tensor]) -> list[torch.Tensor]:
        """uint8 sRGB ``[3, H, W]`` frames, the clip's next -> uint8 ``[3, H, W]``, their L kept."""
        # One clip's frames share a size: Lab and the merge run on the whole batch at once.
        (lightness,) = full_lightness([torch.stack(frames)], self.network.device)
        chroma = working_chroma(self.network, list(lightness.split(1)), self.size)
        if self.stabiliser is not None:
            shape = tuple(chroma[0].shape[-2:])
            small = resize_planes(lightness, shape).split(1)
            chroma = [
                self.stabiliser(l_small, ab) for l_small, ab in zip(small, chroma, strict=True)
            ]
        return list(merge_full_resolution(lightness, torch.cat(chroma)))

    @property
    def cuts(self) -> list[int]:
        """Frames that started a new shot (temporal=flow only)."""
        return self.stabiliser.cuts if self.stabiliser is not None else []


@contextmanager
def open_video(path: Path) -> Iterator[tuple[av.container.InputContainer, av.VideoStream]]:
    """The container and its first video stream; ``VideoError`` if there is none to decode."""
    if path.stat().st_size == 0:
        raise VideoError("empty file")
    try:
        container = av.open(str(path))
    except av.error.FFmpegError as err:
        raise VideoError(UNREADABLE) from err
    with container:
        if not container.streams.video:
            raise VideoError("no video stream")
        stream = container.streams.video[0]
        if stream.codec_context is None:
            raise VideoError("unsupported video codec")
        yield container, stream


def expected_frames(stream: av.VideoStream) -> int | None:
    """The number of frames the header announces, or estimates from its duration (for the
    progress bar: a variable frame rate makes it approximate); or None."""
    if stream.frames:
        return stream.frames
    seconds = stream_seconds(stream)
    rate = stream.average_rate or stream.guessed_rate
    return round(seconds * rate) if seconds is not None and rate else None


def stream_seconds(stream: av.VideoStream) -> float | None:
    """How long the container says the video stream lasts, in seconds; None if it does not."""
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if "DURATION" in stream.metadata:  # Matroska keeps it as a tag: 00:00:01.000000000
        hours, minutes, rest = stream.metadata["DURATION"].split(":")
        return int(hours) * 3600 + int(minutes) * 60 + float(rest)
    return None


def decode_frames(path: Path) -> list[torch.Tensor]:
    """Every frame of a (short) video as uint8 sRGB ``[3, H, W]``, upright as players show it
    (``display_turns``); ``VideoError`` if unreadable."""
    with open_video(path) as (container, stream):
        frames, last = [], None
        try:
            for frame in container.decode(stream):
                frames.append(_turn(_rgb(frame), _quarter_turns(frame)))
                last = frame.time
        except av.error.FFmpegError as err:
            raise VideoError("truncated or corrupt") from err
        _check_complete(len(frames), stream, last)
    return frames


def colorize_video(
    source: Path,
    target: Path,
    colorizer: Callable[[list[torch.Tensor]], list[torch.Tensor]],
    batch_size: int = 8,
    crf: int = 17,
    progress: Callable[[int, int | None], None] | None = None,
    not_carried: list[str] | None = None,
) -> int:
    """Colorize ``source`` into ``target`` (same container; written atomically); returns
    the number of frames. ``progress(done, total)`` after each batch (total may be None).
    Audio and subtitle streams are copied, with every stream's and the container's tags; what
    the output cannot carry is described, one line each, in ``not_carried``.

    Raises ``VideoError`` for an input that cannot be read: nothing is written when no frame
    could be decoded; otherwise the frames colorized before the damage are kept as
    ``NAME.incomplete.EXT`` and the error says where it stopped. ``av.error.FFmpegError`` or
    ``OSError`` when the output cannot be written.
    """
    partial = target.with_name(f".{target.stem}.{os.getpid()}.partial{target.suffix}")
    try:
        with open_video(source) as (container, stream):
            total = expected_frames(stream)
            target.parent.mkdir(parents=True, exist_ok=True)
            turns = display_turns(source)
            with av.open(str(partial), "w") as output:
                encoder = _add_video_stream(output, stream, target.suffix.lower(), crf)
                if turns:  # the same tag: the stored pixels stay as they were
                    encoder.set_display_rotation(90 * turns)
                copies, left = _carry_streams(container, stream, output, target.suffix.lower())
                if not_carried is not None:
                    not_carried.extend(left)
                done, batch, last = 0, [], None

                def flush() -> None:
                    nonlocal done
                    # The network sees frames upright; they are stored as they came.
                    upright = [_turn(f, turns) for f, _ in batch]
                    for (_, pts), rgb in zip(batch, colorizer(upright), strict=True):
                        frame = _encode_rgb(encoder, _turn(rgb, -turns))
                        frame.pts, frame.time_base = pts, stream.time_base
                        output.mux(encoder.encode(frame))
                    done += len(batch)
                    batch.clear()
                    if progress is not None:
                        progress(done, total)

                failure = None
                try:
                    for packet in _demux(container, stream, *copies):
                        if packet.stream is stream:
                            for frame in _decode(packet):
                                batch.append((_rgb(frame), frame.pts))
                                last = frame.time
                                if len(batch) == batch_size:
                                    flush()
                        elif packet.dts is not None:  # the demuxer's empty end-of-stream ones
                            packet.stream = copies[packet.stream]
                            output.mux(packet)
                    if batch:
                        flush()
                    _check_complete(done, stream, last)
                except VideoError as err:
                    if batch:  # decoded before the damage: colorized too
                        flush()
                    if done == 0:
                        raise
                    failure = err
                output.mux(encoder.encode(None))
        if failure is not None:
            # Hours of work are not thrown away, nor written under a name that looks complete.
            incomplete = target.with_name(f"{target.stem}.incomplete{target.suffix}")
            os.replace(partial, incomplete)
            raise VideoError(
                f"{failure.reason} after {done} frames ({last or 0:.1f} s): those are in "
                f"{incomplete.name}"
            )
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
    return done


# Tags a muxer writes itself (or that describe the old encoding): never copied.
_MUXER_TAGS = {"encoder", "duration", "major_brand", "minor_version", "compatible_brands",
               "bps", "number_of_frames", "number_of_bytes"}  # fmt: skip


def copied_tags(metadata: dict[str, str]) -> dict[str, str]:
    """A container's or stream's tags (title, language, timecode, creation time, ...) without
    the ones the muxer writes for the new file."""
    return {key: value for key, value in metadata.items()
            if key.lower() not in _MUXER_TAGS and not key.startswith("_STATISTICS")}  # fmt: skip


def _carry_streams(
    container: av.container.InputContainer, video: av.VideoStream,
    output: av.container.OutputContainer, suffix: str,
) -> tuple[dict[av.stream.Stream, av.stream.Stream], list[str]]:  # fmt: skip
    """Set up the copy of everything but ``video`` into ``output``: the container's tags, and
    each audio and subtitle stream (packets copied later, tags now). Returns input stream ->
    its copy, and one line for each stream that is not carried, saying why."""
    output.metadata.update(copied_tags(container.metadata))
    copies, left = {}, []
    for source in container.streams:
        codec = source.codec_context.name if source.codec_context else None
        name = f"{source.type} stream #{source.index} ({codec or 'unknown codec'})"
        if source is video:
            continue
        if source.type in ("audio", "subtitle"):
            try:
                copies[source] = output.add_stream_from_template(source)
            except ValueError:  # the container cannot hold that codec
                left.append(f"{name}: {suffix} cannot hold {codec}")
                continue
            copies[source].metadata.update(copied_tags(source.metadata))
        elif source.type == "data" and "timecode" in source.metadata:
            continue  # QuickTime's timecode track: written again from the video's timecode tag
        elif source.type == "video":
            left.append(f"{name}: only the first video stream is colorized")
        else:
            left.append(f"{name}: {source.type} streams are not copied")
    return copies, left


def _add_video_stream(
    output: av.container.OutputContainer, source: av.VideoStream, suffix: str, crf: int
) -> av.VideoStream:
    """An encoder for ``source``'s frames: its size and pixel aspect ratio, and its time base,
    so the input's timestamps (frame rate, variable or not, and length) carry over unchanged."""
    rate = source.average_rate or source.guessed_rate or Fraction(25)
    size = source.codec_context.width, source.codec_context.height
    encoder = _new_encoder(output, suffix, rate, size, crf)
    encoder.metadata.update(copied_tags(source.metadata))  # language, title, timecode, ...
    if source.codec_context.sample_aspect_ratio:  # anamorphic (DVD, DV): plays as it did
        encoder.codec_context.sample_aspect_ratio = source.codec_context.sample_aspect_ratio
    if int(source.codec_context.colorspace) in _KNOWN_STANDARDS:  # the input says: follow it
        tag = _KNOWN_STANDARDS[int(source.codec_context.colorspace)]
        context = encoder.codec_context
        context.colorspace, context.color_primaries, context.color_trc = tag, tag, tag
    if source.time_base is not None:
        encoder.time_base = encoder.codec_context.time_base = source.time_base
    return encoder


def _new_encoder(
    output: av.container.OutputContainer, suffix: str, rate: Fraction | int,
    size: tuple[int, int], crf: int,
) -> av.VideoStream:  # fmt: skip
    """A video stream of ``size`` (width, height) at constant quality ``crf``: VP9 in WebM
    (``b=0`` makes its crf a constant quality, not a bitrate cap), H.264 elsewhere, without
    B-frames in AVI (which has no presentation timestamps to put reordered frames back)."""
    codec = _ENCODERS.get(suffix, "libx264")
    options = {"crf": str(crf)} | ({"b": "0"} if codec == "libvpx-vp9" else {})
    if suffix == ".avi":
        options["bf"] = "0"
    encoder = output.add_stream(codec, rate=rate, options=options)
    # 4:2:0 halves the chroma planes: H.264 needs even sizes (VP9 rounds up itself).
    encoder.width, encoder.height = size if codec == "libvpx-vp9" else _even(*size)
    encoder.pix_fmt = "yuv420p"
    tag = _colour_tag(size[1])
    context = encoder.codec_context
    context.colorspace, context.color_primaries, context.color_trc = tag, tag, tag
    context.color_range = ColorRange.MPEG
    return encoder


# FFmpeg's colour matrix numbers that name a standard -> the tag written: BT.709 (1), or
# BT.601 (5: BT.470 BG, 6: SMPTE 170M), written as 6.
_KNOWN_STANDARDS = {1: 1, 5: 6, 6: 6}


def _colour_tag(height: int) -> int:
    """The colour standard of a picture ``height`` rows high, as players assume it: BT.709
    for HD (720 rows and more), BT.601 (SMPTE 170M) below. FFmpeg's number for it is the same
    for the matrix, the primaries and the transfer: 1 and 6."""
    return 1 if height >= 720 else 6


def _encode_rgb(encoder: av.VideoStream, rgb: torch.Tensor) -> av.VideoFrame:
    """uint8 sRGB ``[3, H, W]`` -> a frame in the encoder's format, converted with the matrix
    its tags name (limited range), and tagged so: what players read is what was written."""
    rgb = _pad_to(rgb, encoder.width, encoder.height)
    frame = av.VideoFrame.from_ndarray(rgb.permute(1, 2, 0).contiguous().numpy(), "rgb24")
    tag = encoder.codec_context.colorspace
    matrix = Colorspace.ITU709 if tag == 1 else Colorspace.ITU601
    frame = frame.reformat(
        format=encoder.pix_fmt, dst_colorspace=matrix, dst_color_range=ColorRange.MPEG,
        dst_color_trc=tag, dst_color_primaries=tag,
    )  # fmt: skip
    frame.colorspace = tag
    return frame


def _even(width: int, height: int) -> tuple[int, int]:
    return width + width % 2, height + height % 2


def _pad_to(rgb: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """``[3, h, w]`` grown to ``[3, height, width]`` by repeating its last row and column."""
    rows, columns = height - rgb.shape[1], width - rgb.shape[2]
    if rows:
        rgb = torch.cat([rgb, rgb[:, -1:].expand(-1, rows, -1)], dim=1)
    if columns:
        rgb = torch.cat([rgb, rgb[:, :, -1:].expand(-1, -1, columns)], dim=2)
    return rgb


def _demux(container: av.container.InputContainer, *streams: av.stream.Stream) -> Iterator:
    try:
        yield from container.demux(*streams)
    except av.error.FFmpegError as err:
        raise VideoError("truncated or corrupt") from err


def _decode(packet: av.Packet) -> list[av.VideoFrame]:
    try:
        return packet.decode()
    except av.error.FFmpegError as err:
        raise VideoError("truncated or corrupt") from err


def display_turns(path: Path) -> int:
    """How many quarter turns counterclockwise players give the video's frames (its display
    matrix: a phone's portrait clip is stored sideways with -90 degrees, so -1); 0 if none."""
    with open_video(path) as (container, stream):
        try:
            frame = next(container.decode(stream), None)
        except av.error.FFmpegError:
            return 0  # the decode proper reports it
    return _quarter_turns(frame) if frame is not None else 0


def _quarter_turns(frame: av.VideoFrame) -> int:
    return round(frame.rotation / 90) if frame.rotation else 0


def _turn(rgb: torch.Tensor, turns: int) -> torch.Tensor:
    """``[3, H, W]`` turned ``turns`` quarter turns counterclockwise (as shown on screen)."""
    return torch.rot90(rgb, k=turns, dims=(1, 2)) if turns % 4 else rgb


def _rgb(frame: av.VideoFrame) -> torch.Tensor:
    """A decoded frame as uint8 sRGB ``[3, H, W]``."""
    return torch.from_numpy(frame.to_ndarray(format="rgb24")).permute(2, 0, 1)


def _check_complete(decoded: int, stream: av.VideoStream, last: float | None) -> None:
    """A file that ends before what its container knows is truncated: fewer frames than it
    counts, or, where it only knows the duration, a last frame (at ``last`` seconds) that much
    earlier than its end. Not the duration times a frame rate, which a variable frame rate
    makes wrong."""
    if decoded == 0:
        raise VideoError("truncated or corrupt")
    if stream.frames:
        if decoded < stream.frames - _MISSING_FRAMES_ALLOWED:
            raise VideoError("truncated or corrupt")
        return
    seconds, rate = stream_seconds(stream), stream.average_rate or stream.guessed_rate
    if seconds is None or last is None or not rate:
        return
    interval = 1 / float(rate)  # the mean time between frames
    if seconds - last > (_MISSING_FRAMES_ALLOWED + 1) * interval:
        raise VideoError("truncated or corrupt")


def write_video(
    path: Path, frames: list[torch.Tensor], rate: int = 12, crf: int = 17,
    audio: tuple[torch.Tensor, int] | None = None,
) -> None:  # fmt: skip
    """Encode uint8 sRGB ``[3, H, W]`` frames at ``rate`` frames/s into ``path`` (container by
    its suffix, encoded as ``colorize_video`` encodes), with ``audio``: (float samples
    ``[channels, n]`` in [-1, 1], sample rate), encoded as AAC (Opus in WebM), if given."""
    with av.open(str(path), "w") as output:
        height, width = frames[0].shape[1:]
        encoder = _new_encoder(output, path.suffix.lower(), rate, (width, height), crf)
        if audio is not None:  # every stream before the first packet
            samples, sample_rate = audio
            codec = "libopus" if path.suffix.lower() == ".webm" else "aac"
            layout = "mono" if samples.shape[0] == 1 else "stereo"
            sound = output.add_stream(codec, rate=sample_rate, layout=layout)
        for rgb in frames:
            output.mux(encoder.encode(_encode_rgb(encoder, rgb)))
        output.mux(encoder.encode(None))
        if audio is not None:
            chunk = av.AudioFrame.from_ndarray(samples.float().numpy(), "fltp", layout)
            chunk.sample_rate = sample_rate
            output.mux(sound.encode(chunk))
            output.mux(sound.encode(None))
