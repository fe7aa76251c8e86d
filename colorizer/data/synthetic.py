"""Procedurally generated colour scenes: no I/O, learnable, for smoke tests and benchmarks.

Colour here is a function of luminance shape and texture, as it is (loosely) in photographs,
so a small CNN can genuinely learn to colorize these images, and a model that does not
learn stays visibly wrong:

- background: streaky "grass" (always green) or smoothly rippled "sand" (always tan),
  both bright, with random brightness;
- discs are always red, squares always blue (both darker than any background, so they
  stand out in grayscale), patches of horizontal stripes are always yellow (alternating
  bright and dark shades of it).

``colours="random"`` draws each scene's five colours at random instead: the same shapes and
textures, but colour no longer follows from them, so only hints (``colorizer.hints``) can
tell it: the data on which a hint-taking model shows what hints are worth.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from typing import Any

import torch
from torch.utils.data import Dataset

from colorizer.data.base import DataError, ImageDataModule, split_key
from colorizer.errors import require_int

SCENE_CLASSES = ("grass", "sand", "disc", "square", "stripes")
GRASS, SAND, DISC, SQUARE, STRIPES = range(len(SCENE_CLASSES))

# sRGB in [0, 1]; Rec. 601 luma in the comments: shapes are dark, backgrounds bright.
CLASS_COLOURS = torch.tensor(
    [
        [0.45, 0.80, 0.30],  # grass, Y 0.64
        [0.85, 0.75, 0.52],  # sand, Y 0.75
        [0.80, 0.12, 0.10],  # disc: red, Y 0.32
        [0.15, 0.30, 0.85],  # square: blue, Y 0.32
        [0.95, 0.85, 0.15],  # stripes: yellow, Y 0.80 (and 0.28 for the dark stripes)
    ]
)
_DARK_STRIPE = 0.35  # dark stripes are this shade of the yellow: same hue, far lower luminance


def scene_seed(seed: int, split: str, index: int) -> int:
    """RNG seed of image ``index`` of ``split``: a hash, so splits never share a scene."""
    digest = hashlib.blake2b(f"{seed}/{split}/{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1  # fits torch's signed 64-bit seeds


COLOURS = ("fixed", "random")


def render_scene(
    generator: torch.Generator, size: int, colours: str = "fixed"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw one scene.

    Args:
        generator: the only source of randomness, so a seed fixes the scene.
        size: side S in pixels.
        colours: ``fixed`` (each kind its own colour) or ``random`` (drawn per scene).

    Returns:
        image: uint8 ``[3, S, S]`` RGB in [0, 255].
        labels: int64 ``[S, S]``, index into ``SCENE_CLASSES`` of what each pixel shows.
    """
    g = generator
    ys = torch.arange(size, dtype=torch.float32).view(-1, 1)
    xs = torch.arange(size, dtype=torch.float32).view(1, -1)
    u = torch.rand(8, generator=g).tolist()
    palette = CLASS_COLOURS
    if colours == "random":  # drawn after u, so fixed-colour scenes stay as they were
        palette = 0.1 + 0.85 * torch.rand(len(SCENE_CLASSES), 3, generator=g)

    background = GRASS if u[0] < 0.5 else SAND
    if background == GRASS:
        # Vertical blades: noise that changes every pixel across but every 3 pixels down.
        blades = torch.rand((size + 2) // 3, size, generator=g).repeat_interleave(3, dim=0)
        texture = 0.8 + 0.3 * blades[:size]
    else:
        angle, period, phase = u[1] * math.pi, size / (4 + 6 * u[2]), u[3] * 2 * math.pi
        ripples = 2 * math.pi * (xs * math.cos(angle) + ys * math.sin(angle)) / period
        grain = torch.rand(size, size, generator=g) - 0.5
        texture = 1.0 + 0.06 * torch.sin(ripples + phase) + 0.03 * grain
    brightness = 0.85 + 0.25 * u[4]
    image = palette[background].view(3, 1, 1) * (brightness * texture)
    labels = torch.full((size, size), background, dtype=torch.int64)

    stripe_width = max(2, size // 20)  # 3 px at 64: visible, several per patch
    for kind_u, cx_u, cy_u, radius_u, shade_u in torch.rand(1 + int(u[5] * 4), 5, generator=g):
        kind = DISC + int(kind_u * 3)
        dx, dy = xs - cx_u * size, ys - cy_u * size
        radius = (0.08 + 0.10 * radius_u) * size
        shade = 0.6 + 0.4 * shade_u
        if kind == DISC:
            mask = dx**2 + dy**2 <= radius**2
            tone = shade
        elif kind == SQUARE:
            mask = (dx.abs() <= radius) & (dy.abs() <= radius)
            tone = shade
        else:
            mask = (dx.abs() <= 1.2 * radius) & (dy.abs() <= radius)
            bright_row = torch.div(dy + radius, stripe_width, rounding_mode="floor") % 2 == 0
            bright = 0.85 + 0.15 * shade_u
            tone = torch.where(bright_row, bright, _DARK_STRIPE * bright)
        image = torch.where(mask, palette[kind].view(3, 1, 1) * tone, image)
        labels = torch.where(mask, kind, labels)

    # Mild sensor noise so no region is perfectly flat.
    image = image * (1.0 + 0.03 * (torch.rand(size, size, generator=g) - 0.5))
    # +0.5 then truncate rounds (values are >= 0); Tensor.round is oddly slow on small CPU tensors.
    return (image.clamp(0.0, 1.0) * 255.0 + 0.5).to(torch.uint8), labels


class SyntheticScenes(Dataset[torch.Tensor]):
    """``length`` scenes of one split; item i is uint8 ``[3, S, S]``, a pure function of
    ``(seed, split, i)``, rendered on demand in the worker."""

    def __init__(
        self, split: str, length: int, size: int, seed: int, colours: str = "fixed"
    ) -> None:
        self.split, self.length, self.size, self.seed = split, length, size, seed
        self.colours = colours

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, key: int | tuple[int, int]) -> torch.Tensor:
        _, index = split_key(key)  # a scene is the same in every epoch
        if not 0 <= index < self.length:
            raise IndexError(f"scene {index} out of range for {self.length} scenes")
        generator = torch.Generator().manual_seed(scene_seed(self.seed, self.split, index))
        return render_scene(generator, self.size, self.colours)[0]


class SyntheticDataModule(ImageDataModule):
    """Synthetic colour scenes (see module docstring). Batches: uint8 ``[B, 3, S, S]``, RGB."""

    source_settings = ("colours",)  # other colours: other images

    def __init__(
        self,
        image_size: int = 64,
        batch_size: int = 16,
        num_workers: int = 0,
        num_train: int = 512,
        num_val: int = 64,
        num_test: int = 64,
        seed: int = 42,
        augment: Mapping[str, Any] | None = None,
        colours: str = "fixed",
    ) -> None:
        super().__init__(image_size, batch_size, num_workers, seed, augment)
        self.save_hyperparameters()
        if colours not in COLOURS:
            raise DataError(f"data.colours={colours!r} is not one of: {', '.join(COLOURS)}")
        self.colours = colours
        for name, value in (("num_train", num_train), ("num_val", num_val), ("num_test", num_test)):
            require_int(f"data.{name}", value, error=DataError)
        self.sizes = {"train": num_train, "val": num_val, "test": num_test}

    def setup(self, stage: str | None = None) -> None:
        self.train_set, self.val_set, self.test_set = (
            SyntheticScenes(split, length, self.image_size, self.seed, self.colours)
            for split, length in self.sizes.items()
        )
