"""The flicker metric's floor: the warping error of perfectly steady colours, written as
colorize writes films.

    python experiments/video_flicker/floor.py CLIPS_DIR

Each clip's own L with one constant chroma everywhere (ab = (0, 0), (10, 20), (30, 40)) is
written through the same path as a colorization (``colorize_video``: merged, 8-bit, H.264,
decoded again) and scored with Lai et al.'s warping error (``colorizer.warping_error``). What
remains is the L's own change under the flow (interpolation, the codec) and rounding: a floor
that should not depend on how saturated the steady colour is.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from colorizer.color import AB_SCALE
from colorizer.flow import lightness_u8
from colorizer.inference import full_lightness, merge_full_resolution
from colorizer.video import colorize_video, decode_frames
from colorizer.video_eval import video_files
from colorizer.warping_error import WarpingError

STEADY = {"ab=(0,0)": (0.0, 0.0), "ab=(10,20)": (10.0, 20.0), "ab=(30,40)": (30.0, 40.0)}


def steady(a: float, b: float):
    """A colorizer giving every frame its own L and the chroma (a, b)."""

    def colour(frames: list[torch.Tensor]) -> list[torch.Tensor]:
        (lightness,) = full_lightness([torch.stack(frames)], torch.device("cpu"))
        chroma = torch.zeros(lightness.shape[0], 2, *lightness.shape[-2:])
        chroma[:, 0], chroma[:, 1] = a / AB_SCALE, b / AB_SCALE
        return list(merge_full_resolution(lightness, chroma))

    return colour


def main() -> None:
    errors: dict[str, list[float]] = {name: [] for name in STEADY}
    with tempfile.TemporaryDirectory() as scratch:
        for clip in video_files(sys.argv[1]):
            versions = {}
            for name, (a, b) in STEADY.items():
                written = Path(scratch) / f"{name}{clip.suffix}"
                colorize_video(clip, written, steady(a, b))
                versions[name] = decode_frames(written)
            truth = decode_frames(clip)
            (lightness,) = full_lightness([torch.stack(truth)], torch.device("cpu"))
            meter = WarpingError()
            for i in range(len(truth)):
                rgb = {n: f[i].permute(1, 2, 0).float().numpy() / 255 for n, f in versions.items()}
                meter.update(lightness_u8(lightness[i : i + 1]), rgb)
            for name, error in meter.errors().items():
                errors[name].append(error)
            print(clip.name, {name: round(1000 * e, 4) for name, e in meter.errors().items()})
    for name, values in errors.items():
        print(f"warping error (x10^-3) of a steady {name}: {1000 * np.mean(values):.4f}")


if __name__ == "__main__":
    main()
