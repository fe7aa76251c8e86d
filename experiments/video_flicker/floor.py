"""The flicker metric's floor: the warping error of a perfectly steady colour in 8-bit video.

    python experiments/video_flicker/floor.py CLIPS_DIR

Each clip's own L with one constant chroma (a = 10, b = 20 everywhere), merged and rounded to
8-bit sRGB as colorize writes frames, then measured like a colorization: rounding R, G and B
moves a and b by a few tenths, which the metric counts as change.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

from colorizer.color import AB_SCALE
from colorizer.flow import FlickerMeter, lightness_u8
from colorizer.inference import full_lightness, merge_full_resolution
from colorizer.video import decode_frames
from colorizer.video_eval import chroma_of, video_files


def main() -> None:
    errors = []
    for clip in video_files(sys.argv[1]):
        frames = decode_frames(clip)
        (lightness,) = full_lightness([torch.stack(frames)], torch.device("cpu"))
        chroma = torch.zeros(lightness.shape[0], 2, *lightness.shape[-2:])
        chroma[:, 0], chroma[:, 1] = 10 / AB_SCALE, 20 / AB_SCALE
        steady = merge_full_resolution(lightness, chroma)
        meter = FlickerMeter()
        for i, frame in enumerate(steady):
            meter.update(lightness_u8(lightness[i : i + 1]), {"steady": chroma_of(frame)})
        errors.append(meter.errors()["steady"])
        print(f"{Path(clip).name}: {errors[-1]:.3f}")
    print(f"mean warping error of a steady colour: {np.mean(errors):.3f}")


if __name__ == "__main__":
    main()
