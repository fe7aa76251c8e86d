import lightning as L
import pytest
import torch

from colorizer.data import DataError, SyntheticDataModule
from colorizer.data.augment import DeviceAugmentation


def test_uint8_in_uint8_out_and_nothing_when_disabled():
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    assert DeviceAugmentation(hflip=False)(images) is images
    out = DeviceAugmentation(hflip=True, degrees=10, zoom=0.1, shear=5)(images)
    assert out.dtype == torch.uint8 and out.shape == images.shape


def test_flip_mirrors_whole_images():
    torch.manual_seed(0)
    images = torch.randint(0, 256, (64, 3, 8, 8), dtype=torch.uint8)
    out = DeviceAugmentation(hflip=True)(images)
    flipped = (out == images.flip(-1)).flatten(1).all(1)
    kept = (out == images).flatten(1).all(1)
    assert (flipped | kept).all()
    assert 10 < int(flipped.sum()) < 54  # about half of them


def test_flips_are_on_unless_turned_off():
    torch.manual_seed(0)
    augmentation = DeviceAugmentation(degrees=5)
    augmentation(torch.randint(0, 256, (64, 3, 8, 8), dtype=torch.uint8))
    flipped = augmentation.ops[0]._params["batch_prob"]  # kornia keeps its last draw
    assert 10 < int(flipped.sum()) < 54  # about half of them
    assert not DeviceAugmentation(hflip=False).active


@pytest.mark.parametrize(
    ("setting", "drawn", "low", "high"),
    [
        ({"degrees": 20}, "angle", -20, 20),
        ({"zoom": 0.2}, "scale", 0.8, 1.2),
        ({"shear": 10}, "shear_x", -10, 10),  # a single number: shear along x only
    ],
)
def test_each_warp_draws_every_image_across_its_range_and_nothing_else(setting, drawn, low, high):
    torch.manual_seed(0)
    augmentation = DeviceAugmentation(hflip=False, **setting)
    augmentation(torch.randint(0, 256, (256, 3, 16, 16), dtype=torch.uint8))
    params = augmentation.ops[0]._params  # kornia keeps its last draw
    assert params["batch_prob"].bool().all()  # every image, not a random half
    values = params[drawn].flatten()
    span = high - low
    assert low <= values.min() < low + span / 10 and high - span / 10 < values.max() <= high
    neutral = {"angle": 0.0, "scale": 1.0, "shear_x": 0.0, "shear_y": 0.0}
    for name, value in neutral.items():
        assert name == drawn or (params[name] == value).all(), name


@pytest.mark.parametrize(
    ("name", "limit", "below"), [("degrees", 180, 179.9), ("zoom", 1, 0.99), ("shear", 90, 89.9)]
)
def test_a_warp_at_its_limit_is_refused_by_name(name, limit, below):
    assert DeviceAugmentation(**{name: below}).active
    with pytest.raises(
        ValueError, match=rf"^data.augment.{name}={limit} must be in \[0, {limit}\)$"
    ):
        DeviceAugmentation(**{name: limit})
    with pytest.raises(ValueError, match=rf"^data.augment.{name}=-1 must be in"):
        DeviceAugmentation(**{name: -1})


def test_warps_fill_borders_by_reflection_not_black():
    # A uniform colour stays uniform under any rotation / zoom / shear with reflection padding.
    images = torch.tensor([200, 120, 40], dtype=torch.uint8).view(1, 3, 1, 1).expand(8, 3, 32, 32)
    out = DeviceAugmentation(hflip=False, degrees=30, zoom=0.3, shear=10)(images.contiguous())
    assert (out.int() - images.int()).abs().max() <= 1


def test_bad_values_are_data_errors():
    with pytest.raises(DataError, match="data.augment.degrees"):
        SyntheticDataModule(augment={"degrees": 400})
    with pytest.raises(DataError, match="data.augment"):
        SyntheticDataModule(augment={"rotate": 5})


def test_only_training_batches_are_augmented():
    module = SyntheticDataModule(image_size=16, augment={"hflip": True, "degrees": 45})
    batch = torch.randint(0, 256, (8, 3, 16, 16), dtype=torch.uint8)
    assert module.on_after_batch_transfer(batch, 0) is batch  # no trainer: not training

    trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False)
    module.trainer = trainer
    trainer.training = True
    assert not torch.equal(module.on_after_batch_transfer(batch, 0), batch)
    trainer.validating = True
    assert module.on_after_batch_transfer(batch, 0) is batch
