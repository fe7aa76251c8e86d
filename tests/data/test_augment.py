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
