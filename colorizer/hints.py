"""Colour hints: the user says "this coat was red" (Zhang et al., *Real-Time User-Guided Image
Colorization with Learned Deep Priors*, SIGGRAPH 2017).

A hint-taking network sees L and a sparse hint map, ``[B, 3, H, W]``: normalised a and b
(``ab / 110``) where a hint is, 0 elsewhere, and a mask channel (1 where a hint is). With no
hint the map is all zeros and the network colorizes on its own.

Training reveals the truth's colour at simulated points (:class:`HintSampling`), drawn on the
device from the global random generator, so they are seeded and resumed like augmentation.
At inference, hints are :class:`HintPoint` lists, in fractions of the image, so one list
serves every working size.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from colorizer.color import AB_SCALE
from colorizer.errors import ConfigError

HINT_CHANNELS = 3  # normalised a, normalised b, mask


@dataclass(frozen=True)
class HintPoint:
    """One hint: a square patch of known colour.

    Attributes:
        x, y: the patch's centre, as fractions of the image's width and height, in [0, 1].
        a, b: its colour, CIE a and b (D65).
        side: the patch's side as a fraction of the image's shorter side (0: one pixel at
            any size).
    """

    x: float
    y: float
    a: float
    b: float
    side: float = 0.0


@dataclass(frozen=True)
class HintSampling:
    """How training simulates hints from the truth (README, Colour hints).

    An image gets no hint with probability ``none_share``; otherwise ``1 + G`` points, G
    geometric with success probability ``geometric_p`` (mean ``1 / geometric_p``), at most
    ``max_points``; each point uniform over the image, a square patch of side uniform in
    ``1 .. max_side`` pixels, revealing the mean ab of the truth under it.
    """

    none_share: float = 0.25
    geometric_p: float = 0.125
    max_points: int = 64
    max_side: int = 9

    def __post_init__(self) -> None:
        checks = (
            ("none_share", 0 <= self.none_share <= 1),
            ("geometric_p", 0 < self.geometric_p <= 1),
            ("max_points", isinstance(self.max_points, int) and self.max_points >= 1),
            ("max_side", isinstance(self.max_side, int) and self.max_side >= 1),
        )
        for key, ok in checks:
            if not ok:
                value = getattr(self, key)
                raise ConfigError(f"model.hint_sampling.{key}={value!r} is out of range")


def simulated_hints(ab_norm: torch.Tensor, sampling: HintSampling) -> torch.Tensor:
    """Training hints for normalised ab ``[B, 2, H, W]`` (the truth): a hint map
    ``[B, 3, H, W]`` drawn with ``sampling`` from the global generator, on ab's device."""
    batch, device = ab_norm.shape[0], ab_norm.device
    uniform = torch.rand(batch, device=device).clamp_min(1e-12)
    if sampling.geometric_p < 1:
        extra = torch.floor(torch.log(uniform) / math.log1p(-sampling.geometric_p))
    else:
        extra = torch.zeros_like(uniform)
    counts = (1 + extra).clamp(max=sampling.max_points).long()
    counts = torch.where(torch.rand(batch, device=device) < sampling.none_share, 0, counts)
    return random_hints(ab_norm, counts, sampling.max_points, sampling.max_side)


def random_hints(
    ab_norm: torch.Tensor,
    counts: torch.Tensor,
    max_points: int,
    max_side: int,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """A hint map ``[B, 3, H, W]`` revealing ``counts[i]`` random patches of image i's truth
    (normalised ab ``[B, 2, H, W]``): centres uniform, sides uniform in ``1 .. max_side``.

    ``generator`` (on ab's device) fixes the draw, e.g. so evaluation shows every model the
    same points; None draws from the global generator.
    """
    batch, _, height, width = ab_norm.shape
    device = ab_norm.device

    def draw(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, device=device, generator=generator)

    ys = (draw(batch, max_points) * height).long().clamp(max=height - 1)
    xs = (draw(batch, max_points) * width).long().clamp(max=width - 1)
    sides = 1 + (draw(batch, max_points) * max_side).long().clamp(max=max_side - 1)
    used = torch.arange(max_points, device=device) < counts.to(device)[:, None]
    return reveal_patches(ab_norm, ys, xs, sides, used)


def reveal_patches(
    ab_norm: torch.Tensor,
    ys: torch.Tensor,
    xs: torch.Tensor,
    sides: torch.Tensor,
    used: torch.Tensor,
    values: torch.Tensor | None = None,
) -> torch.Tensor:
    """The hint map ``[B, 3, H, W]`` of square patches.

    Args:
        ab_norm: normalised ab ``[B, 2, H, W]`` of the truth (only its shape and device are
            used when ``values`` is given).
        ys, xs: patch centres in pixels, long ``[B, K]``.
        sides: patch sides in pixels (>= 1), long ``[B, K]``; a patch is cut at the border.
        used: bool ``[B, K]``, which of the K slots are hints.
        values: normalised ab of each patch ``[B, K, 2]``; None: the truth's mean over it.

    Where patches overlap, their colours are averaged.
    """
    batch, _, height, width = ab_norm.shape
    device = ab_norm.device
    top = (ys - (sides - 1) // 2).clamp(0, height - 1)
    left = (xs - (sides - 1) // 2).clamp(0, width - 1)
    bottom = (top + sides).clamp(max=height)
    right = (left + sides).clamp(max=width)
    if values is None:
        values = _patch_means(ab_norm, top, left, bottom, right)
    span = int(sides.max().item()) if sides.numel() else 1
    offsets = torch.arange(span, device=device)
    rows = top[..., None] + offsets  # [B, K, span]
    cols = left[..., None] + offsets
    row_ok = rows < bottom[..., None]
    col_ok = cols < right[..., None]
    inside = row_ok[..., :, None] & col_ok[..., None, :] & used[..., None, None]
    images = torch.arange(batch, device=device)[:, None, None, None]
    flat = (images * height + rows[..., :, None]) * width + cols[..., None, :]  # [B,K,s,s]
    flat = flat[inside]
    colours = values[:, :, None, None, :].expand(-1, -1, span, span, -1)[inside]
    total = torch.zeros(batch * height * width, 2, device=device, dtype=torch.float32)
    count = torch.zeros(batch * height * width, device=device, dtype=torch.float32)
    total.index_put_((flat,), colours.float(), accumulate=True)
    count.index_put_((flat,), torch.ones_like(flat, dtype=torch.float32), accumulate=True)
    mask = (count > 0).float()
    ab = total / count.clamp_min(1)[:, None]
    hint_map = torch.cat([ab, mask[:, None]], dim=1)
    return hint_map.view(batch, height, width, HINT_CHANNELS).permute(0, 3, 1, 2).contiguous()


def _patch_means(
    ab_norm: torch.Tensor,
    top: torch.Tensor,
    left: torch.Tensor,
    bottom: torch.Tensor,
    right: torch.Tensor,
) -> torch.Tensor:
    """Mean normalised ab over each patch ``[y0, y1) x [x0, x1)``, ``[B, K, 2]``, from the
    summed-area table (any patch size at the cost of four lookups)."""
    table = ab_norm.double().cumsum(2).cumsum(3)
    table = torch.nn.functional.pad(table, (1, 0, 1, 0))  # [B, 2, H + 1, W + 1]
    batch, _, _, width1 = table.shape
    flat = table.flatten(2)  # [B, 2, (H + 1) (W + 1)]

    def at(y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        index = (y * width1 + x)[:, None, :].expand(-1, 2, -1)
        return flat.gather(2, index)  # [B, 2, K]

    sums = at(bottom, right) - at(top, right) - at(bottom, left) + at(top, left)
    area = ((bottom - top) * (right - left)).clamp_min(1)[:, None, :]
    return (sums / area).float().permute(0, 2, 1)


def hint_map(
    points: Sequence[Sequence[HintPoint]], shape: tuple[int, int], device: torch.device
) -> torch.Tensor:
    """The hint map ``[B, 3, h, w]`` of user hints, one list per image, at ``shape`` (h, w)."""
    height, width = shape
    batch, most = len(points), max((len(p) for p in points), default=0)
    if most == 0:
        return torch.zeros(batch, HINT_CHANNELS, height, width, device=device)
    ys = torch.zeros(batch, most, dtype=torch.long)
    xs, sides = torch.zeros_like(ys), torch.ones_like(ys)
    used = torch.zeros(batch, most, dtype=torch.bool)
    values = torch.zeros(batch, most, 2)
    for i, image_points in enumerate(points):
        for k, point in enumerate(image_points):
            ys[i, k] = min(height - 1, int(point.y * height))
            xs[i, k] = min(width - 1, int(point.x * width))
            sides[i, k] = max(1, round(point.side * min(height, width)))
            values[i, k] = torch.tensor([point.a, point.b]) / AB_SCALE
            used[i, k] = True
    empty = torch.zeros(batch, 2, height, width, device=device)
    return reveal_patches(
        empty, ys.to(device), xs.to(device), sides.to(device), used.to(device), values.to(device)
    )


class HintError(ConfigError):
    """A hint that cannot be used; the message names the file, the entry and the problem."""


@dataclass(frozen=True)
class PixelHint:
    """A hint as a user gives it, in the photo's own pixels (after EXIF orientation).

    ``x``, ``y``: the centre (0, 0 is the top-left pixel); ``a``, ``b``: CIE ab; ``radius``:
    the patch reaches this many pixels from the centre (0: the one pixel).
    """

    x: float
    y: float
    a: float
    b: float
    radius: float = 0.0

    def in_photo(self, width: int, height: int) -> HintPoint:
        """The hint in fractions of a ``width`` x ``height`` photo; HintError if outside."""
        if not (0 <= self.x < width and 0 <= self.y < height):
            raise HintError(
                f"hint at (x={self.x:g}, y={self.y:g}) lies outside the {width} x {height} photo"
            )
        side = (2 * self.radius + 1) / min(width, height)
        return HintPoint((self.x + 0.5) / width, (self.y + 0.5) / height, self.a, self.b, side)

    def as_json(self) -> dict:
        entry = {"x": self.x, "y": self.y, "ab": [round(self.a, 3), round(self.b, 3)]}
        return entry | ({"radius": self.radius} if self.radius else {})


def colour_to_ab(colour: str) -> tuple[float, float]:
    """``#rrggbb`` -> its CIE a, b (D65); ValueError if it is not one."""
    text = colour.strip()
    if len(text) != 7 or text[0] != "#":
        raise ValueError(f"colour {colour!r} is not #rrggbb")
    rgb = torch.tensor([int(text[i : i + 2], 16) for i in (1, 3, 5)], dtype=torch.uint8)
    from colorizer.color import rgb_to_lab  # deferred: kornia

    lab = rgb_to_lab(rgb.view(1, 3, 1, 1))[0, :, 0, 0]
    return float(lab[1]), float(lab[2])


def parse_hint(entry: object) -> PixelHint:
    """One point of a hints file: ``{"x": .., "y": .., "color": "#rrggbb" | "ab": [a, b],
    "radius": r}``; ValueError naming what is wrong."""
    if not isinstance(entry, dict):
        raise ValueError("a point must be an object with x, y and color or ab")
    unknown = set(entry) - {"x", "y", "color", "ab", "radius"}
    if unknown:
        raise ValueError(f"unknown key {sorted(unknown)[0]!r} (x, y, color, ab, radius)")
    numbers = {}
    for key in ("x", "y", "radius"):
        value = entry.get(key, 0 if key == "radius" else None)
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
        ):
            raise ValueError(f"{key} must be a number, got {value!r}")
        numbers[key] = float(value)
    if numbers["radius"] < 0:
        raise ValueError(f"radius must be >= 0, got {numbers['radius']:g}")
    if ("color" in entry) == ("ab" in entry):
        raise ValueError("give its colour as color (#rrggbb) or ab ([a, b]), one of the two")
    if "color" in entry:
        if not isinstance(entry["color"], str):
            raise ValueError(f"color must be a string #rrggbb, got {entry['color']!r}")
        a, b = colour_to_ab(entry["color"])
    else:
        ab = entry["ab"]
        if not (
            isinstance(ab, list)
            and len(ab) == 2
            and all(isinstance(v, int | float) and not isinstance(v, bool) for v in ab)
        ):
            raise ValueError(f"ab must be two numbers [a, b], got {ab!r}")
        a, b = float(ab[0]), float(ab[1])
    return PixelHint(numbers["x"], numbers["y"], a, b, numbers["radius"])


def read_hints_file(path: str | Path) -> dict[str, list[PixelHint]]:
    """A hints file: JSON ``{"PHOTO": [point, ...], ...}``, PHOTO a path relative to the input
    folder (or the file name of a single input). HintError names the file and the entry."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise HintError(f"hints={path} cannot be read ({err.strerror or err})") from err
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise HintError(f"hints={path} is not JSON ({err})") from err
    if not isinstance(data, dict):
        raise HintError(f'hints={path} must be a JSON object: {{"photo.jpg": [points]}}')
    hints: dict[str, list[PixelHint]] = {}
    for name, points in data.items():
        if not isinstance(points, list):
            raise HintError(f"hints={path}: {name!r} must be a list of points")
        parsed = []
        for i, entry in enumerate(points):
            try:
                parsed.append(parse_hint(entry))
            except ValueError as err:
                raise HintError(f"hints={path}: {name!r} point {i}: {err}") from err
        hints[name] = parsed
    return hints


def write_hints_file(path: str | Path, hints: dict[str, list[PixelHint]]) -> None:
    """Write ``hints`` in the format :func:`read_hints_file` reads."""
    data = {name: [hint.as_json() for hint in points] for name, points in hints.items()}
    Path(path).write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def truth_hints(
    ab_norm: torch.Tensor, count: int, seeds: Sequence[int], max_side: int = 9
) -> list[list[HintPoint]]:
    """``count`` hints per image revealing the truth (normalised ab ``[B, 2, H, W]``), drawn
    with one seed per image, so every model evaluated on an image sees the same points: centres
    uniform, square patches of side uniform in ``1 .. max_side`` px, each the mean ab under it."""
    batch, _, height, width = ab_norm.shape
    if count == 0:
        return [[] for _ in range(batch)]
    points = []
    for i, seed in enumerate(seeds):
        generator = torch.Generator().manual_seed(seed)
        ys = (torch.rand(1, count, generator=generator) * height).long().clamp(max=height - 1)
        xs = (torch.rand(1, count, generator=generator) * width).long().clamp(max=width - 1)
        sides = 1 + (torch.rand(1, count, generator=generator) * max_side).long()
        sides = sides.clamp(max=max_side)
        top = (ys - (sides - 1) // 2).clamp(0, height - 1)
        left = (xs - (sides - 1) // 2).clamp(0, width - 1)
        bottom, right = (top + sides).clamp(max=height), (left + sides).clamp(max=width)
        truth = ab_norm[i : i + 1].float().cpu()
        means = _patch_means(truth, top, left, bottom, right)[0] * AB_SCALE  # [count, 2]
        shorter = min(height, width)
        points.append([
            HintPoint((x + 0.5) / width, (y + 0.5) / height, float(a), float(b), side / shorter)
            for y, x, side, (a, b) in zip(
                ys[0].tolist(), xs[0].tolist(), sides[0].tolist(), means.tolist(), strict=True
            )
        ])  # fmt: skip
    return points
