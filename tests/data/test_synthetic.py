"""SyntheticDataModule: deterministic uint8 batches whose colour follows from luminance shape."""

from __future__ import annotations

import pytest
import torch

from colorizer.data import DataError, SyntheticDataModule
from colorizer.data.images import is_grayscale
from colorizer.data.synthetic import DISC, GRASS, SAND, SQUARE, STRIPES, render_scene, scene_seed

LUMA = torch.tensor([0.299, 0.587, 0.114]).view(3, 1, 1)


def scenes(count: int, size: int = 64) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [render_scene(torch.Generator().manual_seed(i), size) for i in range(count)]


def test_batches_are_uint8_rgb_squares() -> None:
    module = SyntheticDataModule(image_size=32, batch_size=8, num_train=20, num_val=5, num_test=6)
    module.setup("fit")
    train = next(iter(module.train_dataloader()))
    assert train.dtype == torch.uint8 and train.shape == (8, 3, 32, 32)
    assert [len(module.val_set), len(module.test_set)] == [5, 6]
    assert next(iter(module.test_dataloader())).shape == (6, 3, 32, 32)


def test_images_are_a_pure_function_of_seed_split_and_index() -> None:
    a, b, c = (SyntheticDataModule(seed=s, num_train=8, num_val=8, num_test=8) for s in (1, 1, 2))
    for module in (a, b, c):
        module.setup("fit")
    for i in range(8):
        assert torch.equal(a.train_set[i], b.train_set[i])
        assert not torch.equal(a.train_set[i], c.train_set[i])
        assert not torch.equal(a.train_set[i], a.val_set[i])
    # Held-out scenes never repeat a training scene.
    train = {a.train_set[i].numpy().tobytes() for i in range(8)}
    held_out = {s[i].numpy().tobytes() for s in (a.val_set, a.test_set) for i in range(8)}
    assert not train & held_out
    assert len({scene_seed(1, split, 0) for split in ("train", "val", "test")}) == 3


def test_images_are_colourful() -> None:
    for image, _ in scenes(20):
        assert not is_grayscale(image)


def test_each_class_always_has_its_colour() -> None:
    """Would fail for a generator that paints shapes in random colours."""
    rules = {
        GRASS: lambda r, g, b: (g > r) & (r > b),
        SAND: lambda r, g, b: (r > g) & (g > b) & (2 * b > r),
        DISC: lambda r, g, b: (r > 3 * g) & (r > 3 * b),  # red
        SQUARE: lambda r, g, b: (b > 2 * r) & (b > 2 * g),  # blue
        STRIPES: lambda r, g, b: (r > 3 * b) & (g > 3 * b) & ((r - g).abs() * 4 < r),  # yellow
    }
    seen = set()
    for image, labels in scenes(60):
        r, g, b = image.int()
        for kind, rule in rules.items():
            region = labels == kind
            if region.any():
                seen.add(kind)
                assert rule(r, g, b)[region].all(), f"class {kind} has off-colour pixels"
    assert seen == set(rules)


def test_shapes_stand_out_in_grayscale() -> None:
    """The model sees only luminance: each shape must be visible there, not just in colour."""
    for image, labels in scenes(60):
        luma = (image.float() * LUMA).sum(0)
        background = luma[labels <= SAND].mean()
        for kind in (DISC, SQUARE):
            region = labels == kind
            if region.sum() >= 20:
                assert luma[region].mean() < background - 40
        stripes = labels == STRIPES
        if stripes.sum() >= 20:
            assert luma[stripes].std() > 40  # bright and dark bands, not a flat patch


@pytest.mark.parametrize("size", [16, 64, 128])
def test_any_size_renders(size: int) -> None:
    image, labels = render_scene(torch.Generator().manual_seed(3), size)
    assert image.shape == (3, size, size) and image.dtype == torch.uint8
    assert labels.shape == (size, size)


def test_bad_sizes_are_one_line_errors() -> None:
    with pytest.raises(DataError, match="data.num_val=0"):
        SyntheticDataModule(num_val=0)
    with pytest.raises(DataError, match="data.image_size=0"):
        SyntheticDataModule(image_size=0)
