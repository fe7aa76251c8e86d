"""Clips with known motion and a cut, filmed over real photographs, for the flicker study.

    python experiments/video_flicker/make_clips.py PHOTOS_DIR OUT_DIR [--frames 12] [--size 144x256]

Each clip is two shots of ``--frames`` frames (``--size`` HxW): a diagonal pan over one photo,
a cut, then a zooming pan over the next (the photos of PHOTOS_DIR in sorted order, the last
cutting back to the first), written as H.264 MP4 at 12 frames/s. The photos themselves are
read, never copied.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from colorizer.data.images import list_image_files, load_rgb
from colorizer.video import write_video
from colorizer.video_eval import camera_move

PAN = (2.0, 0.7)  # output pixels per frame (x, y)
ZOOM_PAN, ZOOM = (-1.0, 0.4), 1.02  # the second shot: a slower pan, magnified 2 % per frame


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("photos", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--frames", type=int, default=12)
    parser.add_argument("--size", default="144x256")
    args = parser.parse_args()
    shape = tuple(int(side) for side in args.size.split("x"))
    paths = list_image_files(args.photos)
    args.out.mkdir(parents=True, exist_ok=True)
    for i, first in enumerate(paths):
        second = paths[(i + 1) % len(paths)]
        clip = camera_move(load_rgb(first), args.frames, shape, pan=PAN)
        clip += camera_move(load_rgb(second), args.frames, shape, pan=ZOOM_PAN, zoom=ZOOM)
        target = args.out / f"{first.stem}_to_{second.stem}.mp4"
        write_video(target, clip)
        print(f"{target}: {len(clip)} frames, cut at {args.frames}")


if __name__ == "__main__":
    main()
