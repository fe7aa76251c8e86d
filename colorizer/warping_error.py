"""The warping error of Lai et al. (2018), *Learning Blind Video Temporal Consistency*: the
flicker metric of the video consistency and video colorization literature.

For consecutive frames t, t + 1 of an output video V::

    E(t) = sum_x M_t(x) ||V_t(x) - V_t+1(x + F_t(x))||^2 / sum_x M_t(x)

where F_t is the optical flow from frame t to t + 1 of the *input* video (here its L, which
colorization keeps), M_t the pixels that flow follows (forward-backward consistent, the
occlusion test of Ruder et al. 2016, and landing inside the frame), V in RGB [0, 1] as decoded
from the written file, ||.||^2 summed over R, G and B. A video's error is the mean of E(t) over
its frame pairs; pairs across a shot cut (``colorizer.flow.Motion``) are left out.

The flow is OpenCV's Farneback, not the DIS flow the stabiliser (``temporal=flow``) follows, so
the stabiliser is not graded by its own motion estimate. Lai et al. used FlowNet 2.0: absolute
values depend on the flow method, so compare numbers measured with the same one.

Arrays are NumPy: L as uint8 ``[H, W]``, frames as float32 RGB ``[H, W, 3]`` in [0, 1].
"""

from __future__ import annotations

import cv2
import numpy as np

from colorizer.flow import Motion, warp


def farneback_flow(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """float32 ``[H, W, 2]``: where each pixel (x, y) of ``first`` is in ``second`` (dx, dy);
    both uint8 ``[H, W]``. OpenCV's documented default parameters."""
    return cv2.calcOpticalFlowFarneback(first, second, None, 0.5, 3, 15, 3, 5, 1.2, 0)


def consistent_pixels(forward: np.ndarray, backward: np.ndarray) -> np.ndarray:
    """bool ``[H, W]``: pixels of frame t whose forward flow lands inside frame t + 1 and comes
    back: ``|w + ŵ|² <= 0.01 (|w|² + |ŵ|²) + 0.5`` with ŵ the backward flow where w lands
    (Ruder, Dosovitskiy and Brox 2016)."""
    returned, inside = warp(backward, forward)
    round_trip = np.square(forward + returned).sum(-1)
    lengths = np.square(forward).sum(-1) + np.square(returned).sum(-1)
    return inside & (round_trip <= 0.01 * lengths + 0.5)


class WarpingError:
    """Lai et al.'s warping error of several versions of one clip at once, frame by frame.

    ``update`` takes each input frame's L and every version's decoded frame; ``errors()``
    averages E(t) over the frame pairs within shots. ``cuts`` lists the frames (0-based) that
    start a new shot; ``pairs`` counts the pairs scored.
    """

    def __init__(self) -> None:
        self.previous: tuple[np.ndarray, dict[str, np.ndarray]] | None = None
        self.totals: dict[str, float] = {}
        self.pairs = 0
        self.cuts: list[int] = []
        self.frames = 0

    def update(self, lightness: np.ndarray, frames: dict[str, np.ndarray]) -> None:
        """uint8 L ``[H, W]`` of the next input frame and each version's float32 RGB ``[H, W,
        3]`` frame in [0, 1]."""
        if self.previous is not None:
            before, previous = self.previous
            if Motion(before, lightness).cut:
                self.cuts.append(self.frames)
            else:
                forward = farneback_flow(before, lightness)
                valid = consistent_pixels(forward, farneback_flow(lightness, before))
                for name, rgb in frames.items():
                    error = np.square(previous[name] - warp(rgb, forward)[0]).sum(-1)
                    pair = float(error[valid].mean()) if valid.any() else 0.0
                    self.totals[name] = self.totals.get(name, 0.0) + pair
                self.pairs += 1
        self.previous = (lightness, frames)
        self.frames += 1

    def errors(self) -> dict[str, float]:
        """The mean E(t) of each version over the pairs within shots."""
        return {name: total / max(self.pairs, 1) for name, total in self.totals.items()}
