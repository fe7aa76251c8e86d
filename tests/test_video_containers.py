"""Videos are written back in their own container: VP9 in WebM, H.264 in QuickTime and M4V,
every frame at its size, coloured as the network colours photos."""

from pathlib import Path

import av
import numpy as np
import pytest
import torch
from skimage.color import rgb2lab

from colorizer.colorize import colorize
from colorizer.inference import colorize_full_resolution, open_network
from colorizer.video import decode_frames, write_video
from tests.helpers import as_frame, colourful

FRAMES, HEIGHT, WIDTH = 6, 48, 64


def mean_chroma(frames: list[torch.Tensor]) -> float:
    """Mean CIE Lab chroma, sqrt(a² + b²), of uint8 ``[3, H, W]`` frames (scikit-image)."""
    lab = rgb2lab(torch.stack(frames).permute(0, 2, 3, 1).numpy())
    return float(np.hypot(lab[..., 1], lab[..., 2]).mean())


@pytest.mark.parametrize(("suffix", "codec"), [(".webm", "vp9"), (".mov", "h264"),
                                               (".m4v", "h264")])  # fmt: skip
def test_a_video_is_written_in_its_container_with_its_codec(
    make_cfg, tmp_path: Path, checkpoint_of, suffix: str, codec: str
):
    source, target = tmp_path / "in" / f"clip{suffix}", tmp_path / "out" / f"clip{suffix}"
    source.parent.mkdir()
    write_video(source, [as_frame(colourful(HEIGHT, WIDTH, seed)) for seed in range(FRAMES)])
    checkpoint = checkpoint_of("alpha")
    cfg = make_cfg(f"ckpt_path={checkpoint}", f"input={source}", f"output={target.parent}",
                   "temporal=none", "size=32", config_name="colorize")  # fmt: skip
    summary = colorize(cfg)
    assert (summary["colorized"], summary["failed"], summary["frames"]) == (1, 0, FRAMES)
    with av.open(str(target)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == codec
        assert (stream.codec_context.width, stream.codec_context.height) == (WIDTH, HEIGHT)
    written = decode_frames(target)
    assert len(written) == FRAMES and written[0].shape == (3, HEIGHT, WIDTH)
    # As colourful as the same frames colorized as photos, up to the encoder (chroma at half
    # resolution, quantised): measured within 3 %.
    photos = colorize_full_resolution(open_network(checkpoint), decode_frames(source), 32)
    expected = mean_chroma(photos)
    assert expected > 3 and 0.85 * expected < mean_chroma(written) < 1.15 * expected
