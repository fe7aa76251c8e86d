"""Motion between video frames, and the flow-guided chroma stabiliser built on it
(``temporal=flow``). Shot cuts found here also delimit the pairs the flicker metric
(``colorizer.warping_error``) scores.

Motion is OpenCV's DIS optical flow computed on CIE L, which colorization never changes, so
the same motion holds for the input, the truth and every colorization of a clip. A pixel of
frame t is followed back into frame t - 1 (backward warping); where that fails (occlusions,
pixels entering the frame, lighting changes) the L warped from t - 1 disagrees with frame t's
own L, which is how the stabiliser tells trusted pixels from the others. Shot cuts (a jump in
the L histogram, or a frame that the flow can hardly follow) reset the stabiliser and are left
out of the metric.

Arrays here are NumPy, as OpenCV wants them: L as uint8 ``[H, W]`` (CIE L x 2.55), chroma as
float32 ``[H, W, 2]`` (a, b; in any unit, the same for all frames).
"""

from __future__ import annotations

import cv2
import numpy as np
import torch

from colorizer.color import denormalize_l

L_TO_U8 = 2.55
"""CIE L in [0, 100] -> uint8 levels for the flow (0-255)."""

CUT_HISTOGRAM_DISTANCE = 0.4
"""A cut when half the L1 distance of two frames' 32-bin L histograms exceeds this (0: the same
histogram, 1: disjoint). Pans and zooms over one scene stay far below it (< 0.15 in the tests'
clips); a cut between unrelated shots is usually well above it."""

MIN_TRACKED_FRACTION = 0.25
"""A cut when fewer of a frame's pixels than this are followed back with confidence > 0.5:
catches a cut between shots with similar histograms."""

BAR_LEVEL = 16
"""uint8 L (about 6 L units): a row or column of a frame at or below it, in both frames of a
pair, is a letterbox or pillarbox bar and left out of cut detection."""

TRUSTED_L_ERROR = 4.0
"""L units: a pixel is followed back (for cut detection) when its L and the L warped from the
previous frame differ by less (ΔL)."""

STABILISER_L_SCALE = 8.0
"""L units: the stabiliser trusts the warped chroma of a pixel by exp(-(ΔL / 8)^2)."""

GRADUAL_L_DRIFT = 1.5
"""L units: a gradual transition (dissolve, fade, a lighting change) when the median, over the
tracked pixels of the active picture, of |L - the L the carried colour was predicted on|
exceeds this: the history is dropped there as at a cut. Pans and zooms over one scene stay
below 1 in the tests' clips; a 10-frame dissolve between unrelated shots passes it on its
first or second frame and reaches 4-5 in its middle."""

STABILISER_WEIGHT = 0.9
"""How much of the previous output's chroma a fully trusted pixel keeps; the fresh prediction
gets the rest. An exponential memory of about 1 / (1 - 0.9) = 10 frames along the motion."""


def lightness_u8(l_norm: torch.Tensor) -> np.ndarray:
    """Normalised L ``[1, 1, H, W]`` in [-1, 1] -> uint8 ``[H, W]`` (L x 2.55) for the flow."""
    lightness = denormalize_l(l_norm.float())[0, 0].mul(L_TO_U8).round_().clamp_(0, 255)
    return lightness.to(torch.uint8).cpu().numpy()


_FLOW = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)


def backward_flow(current: np.ndarray, previous: np.ndarray) -> np.ndarray:
    """float32 ``[H, W, 2]``: where each pixel (x, y) of ``current`` was in ``previous``, as
    (dx, dy); both uint8 ``[H, W]``."""
    return _FLOW.calc(current, previous, None)


def warp(image: np.ndarray, flow: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``image`` (float32 ``[H, W]`` or ``[H, W, C]``, of the previous frame) moved onto the
    current frame by ``backward_flow``; and bool ``[H, W]``: the pixels that came from inside
    the previous frame (the others enter the picture and have no past)."""
    height, width = flow.shape[:2]
    grid_x, grid_y = np.meshgrid(np.arange(width, dtype=np.float32), np.arange(height))
    map_x, map_y = grid_x + flow[..., 0], grid_y.astype(np.float32) + flow[..., 1]
    warped = cv2.remap(image, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    inside = (map_x >= 0) & (map_x <= width - 1) & (map_y >= 0) & (map_y <= height - 1)
    return warped, inside


def active_picture(previous: np.ndarray, current: np.ndarray) -> tuple[slice, slice]:
    """The rows and columns of two uint8 L frames ``[H, W]`` that hold the picture: the bounding
    box of what is not a black bar (``BAR_LEVEL``) in both; the whole frame if all is black."""
    brightest = np.maximum(previous, current)
    rows = np.flatnonzero(brightest.max(axis=1) > BAR_LEVEL)
    columns = np.flatnonzero(brightest.max(axis=0) > BAR_LEVEL)
    if rows.size == 0 or columns.size == 0:
        return slice(None), slice(None)
    return slice(rows[0], rows[-1] + 1), slice(columns[0], columns[-1] + 1)


def histogram_distance(first: np.ndarray, second: np.ndarray, bins: int = 32) -> float:
    """Half the L1 distance of the normalised L histograms of two uint8 frames, in [0, 1]."""
    a, b = (np.bincount(frame.ravel() // (256 // bins), minlength=bins) / frame.size
            for frame in (first, second))  # fmt: skip
    return float(np.abs(a - b).sum() / 2)


class Motion:
    """The motion from frame t - 1 to frame t (uint8 L ``[H, W]`` each).

    Attributes:
        flow: ``backward_flow(current, previous)``.
        l_error: float32 ``[H, W]``: |L - L warped from t - 1| in L units; infinite where the
            pixel came from outside the previous frame.
        active: the rows and columns of the picture (``active_picture``): black bars that a
            letterboxed film keeps in every frame would otherwise count as tracked and hide a cut.
        cut: whether the two frames belong to different shots: over the active picture, their
            L histograms differ by more than ``CUT_HISTOGRAM_DISTANCE``, or fewer than
            ``MIN_TRACKED_FRACTION`` of the pixels are followed back within ``TRUSTED_L_ERROR``.
    """

    def __init__(self, previous: np.ndarray, current: np.ndarray):
        self.flow = backward_flow(current, previous)
        warped, inside = warp(previous.astype(np.float32), self.flow)
        self.l_error = np.abs(current.astype(np.float32) - warped) / L_TO_U8
        self.l_error[~inside] = np.inf
        self.active = active_picture(previous, current)
        tracked = float((self.l_error[self.active] < TRUSTED_L_ERROR).mean())
        jump = histogram_distance(previous[self.active], current[self.active])
        jump = jump > CUT_HISTOGRAM_DISTANCE
        self.cut = jump or tracked < MIN_TRACKED_FRACTION

    def confidence(self, scale: float, drift: np.ndarray | float = 0.0) -> np.ndarray:
        """float32 ``[H, W]`` in [0, 1]: exp(-(ΔL / scale)^2) with ΔL the larger of ``l_error``
        and ``drift`` (L units, ``[H, W]`` or a number); 0 for pixels with no past."""
        return np.exp(-((np.maximum(self.l_error, drift) / scale) ** 2))

    def warp(self, chroma: np.ndarray) -> np.ndarray:
        """The previous frame's chroma ``[H, W, 2]`` moved onto the current frame."""
        return warp(chroma, self.flow)[0]


class ChromaStabiliser:
    """Temporal consistency for per-frame predicted chroma, one frame at a time, in order.

    Each frame's output chroma is its prediction pulled towards the previous frame's *output*
    warped along the motion: ``ab = pred + w * c * (warp(ab_prev) - pred)`` with
    ``w = STABILISER_WEIGHT`` and c a per-pixel trust, ``exp(-(ΔL / STABILISER_L_SCALE)^2)``.
    ΔL is the larger of two L differences: to the previous frame warped (occluded and newly
    visible pixels take the fresh prediction), and to the L the carried colour was predicted
    on, blended and warped along with it. At a cut the history is dropped for the whole frame,
    so colour never crosses from one shot into the next; likewise in a gradual transition (a
    dissolve, a fade), where each frame's L differs little from the last but more and more from
    the frames the old shot's colour came from (``GRADUAL_L_DRIFT``). ``cuts`` lists the frames
    (0-based) that start a new shot, the first frame excepted; ``transitions`` the frames
    whose history was dropped in a gradual transition.
    """

    def __init__(self, weight: float = STABILISER_WEIGHT, l_scale: float = STABILISER_L_SCALE):
        self.weight, self.l_scale = weight, l_scale
        # The previous frame's uint8 L, its output chroma and the L that chroma was seen on.
        self.previous: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        self.frames = 0
        self.cuts: list[int] = []
        self.transitions: list[int] = []

    def __call__(self, l_norm: torch.Tensor, ab_norm: torch.Tensor) -> torch.Tensor:
        """Normalised L ``[1, 1, h, w]`` and predicted normalised ab ``[1, 2, h, w]`` of the next
        frame -> its stabilised normalised ab, same shape and device."""
        lightness = lightness_u8(l_norm)
        chroma = np.ascontiguousarray(ab_norm[0].float().permute(1, 2, 0).cpu().numpy())
        seen_on = lightness.astype(np.float32)
        if self.previous is not None and self.previous[0].shape == lightness.shape:
            motion = Motion(self.previous[0], lightness)
            if motion.cut:
                self.cuts.append(self.frames)
            else:
                carried_on = motion.warp(self.previous[2])
                drift = np.abs(seen_on - carried_on) / L_TO_U8
                if _gradual_transition(drift, motion):
                    self.transitions.append(self.frames)
                else:
                    trust = self.weight * motion.confidence(self.l_scale, drift)
                    chroma = chroma + trust[..., None] * (motion.warp(self.previous[1]) - chroma)
                    seen_on = seen_on + trust * (carried_on - seen_on)
        self.previous = (lightness, chroma, seen_on)
        self.frames += 1
        return torch.from_numpy(chroma).permute(2, 0, 1)[None].to(ab_norm.device)


def _gradual_transition(drift: np.ndarray, motion: Motion) -> bool:
    """Whether the L under the carried colour has drifted from the frame's own (``drift``, L
    units ``[H, W]``) by more than ``GRADUAL_L_DRIFT`` at the median tracked pixel."""
    tracked = (motion.l_error < TRUSTED_L_ERROR)[motion.active]
    if not tracked.any():
        return False
    return float(np.median(drift[motion.active][tracked])) > GRADUAL_L_DRIFT
