"""The images a checkpoint is evaluated on: its training run's split, cropped as validation is.

A split is a function of settings such as ``seed`` and the fractions, and an evaluation's
defaults need not be the run's (``experiment=gan_coco`` trains with seed 123): scored with
other settings, a "test" split would hold images the model trained on. So when the
checkpoint's run read the same images, its split settings are used.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Mapping
from typing import Any

import torch
from torch.utils.data import Dataset
from torchvision.transforms import v2

from colorizer.data.base import ImageDataModule, ImageFileDataset
from colorizer.data.shards import ShardDataset
from colorizer.errors import ConfigError

log = logging.getLogger(__name__)

SPLITS = ("test", "val", "train", "all")
STAGES = {"test": "test", "val": "validate", "train": "fit"}


def datamodule_as_trained(
    build: Callable[..., ImageDataModule],
    trained: Mapping[str, Any] | None,
    split: str,
    given: Collection[str] = (),
    where: str = "the checkpoint",
) -> ImageDataModule:
    """``build(**settings)``, splitting its images as the training run did.

    Args:
        build: makes the datamodule, with settings that replace the configured ones.
        trained: the training run's datamodule hyper-parameters (None: not recorded).
        split: the split to evaluate (``all`` needs no split, so nothing is reconciled).
        given: the keys the user set on the command line (``data.seed``, ``seed``...): one
            that splits otherwise than the training run is refused, not silently replaced.
        where: what ``trained`` came from, for the messages.
    """
    datamodule = build()
    if split == "all":
        return datamodule
    if not trained:
        log.warning("%s does not record its training data: check that data.seed and the "
                    "split fractions are the training run's", where)  # fmt: skip
        return datamodule
    differences = datamodule.split_differences(trained)
    if differences is None:
        log.info("other data than %s was trained on: its own split settings", where)
        return datamodule
    for key, value in differences.items():
        for name in (f"data.{key}", *(["seed"] if key == "seed" else [])):
            if name in given:
                raise ConfigError(
                    f"{name}={datamodule.hparams[key]} splits the images otherwise than "
                    f"{where}, trained with data.{key}={value}: split={split} would score "
                    f"images it trained on; drop {name}= to use the run's split, or use split=all"
                )
    if not differences:
        return datamodule
    settings = ", ".join(f"data.{key}={value}" for key, value in differences.items())
    log.info("split as the checkpoint's training run did: %s", settings)
    return build(**differences)


def eval_dataset(datamodule: ImageDataModule, split: str, *, native: bool) -> Dataset:
    """The images of ``split`` (``all``: every usable image of the source, unsplit), uncropped
    at random: items are uint8 ``[3, H, W]``, at ``data.image_size`` unless ``native``."""
    if split == "all":
        all_images = getattr(datamodule, "all_images", None)
        if all_images is None:
            raise ConfigError(f"split=all needs a folder of images; {type(datamodule).__name__} "
                              "has none: use split=test, val or train")  # fmt: skip
        dataset: Dataset = ImageFileDataset(
            all_images(), v2.Identity(), min_size=datamodule.min_size
        )
    else:
        datamodule.prepare_data()
        datamodule.setup(STAGES[split])
        dataset = getattr(datamodule, f"{split}_set")
    if isinstance(dataset, ImageFileDataset | ShardDataset):
        # Training sets crop at random: evaluation must see the same pixels every time.
        dataset.transform = v2.Identity() if native else datamodule.eval_transform()
    if isinstance(dataset, ImageFileDataset):
        dataset.decode_size = None if native else datamodule.image_size
    return dataset


def stack_by_size(images: list[torch.Tensor]) -> list[torch.Tensor]:
    """Collate uint8 ``[3, H, W]`` items into one ``[B, 3, H, W]`` batch per distinct size."""
    groups: dict[tuple[int, ...], list[torch.Tensor]] = {}
    for image in images:
        groups.setdefault(tuple(image.shape), []).append(image)
    return [torch.stack(group) for group in groups.values()]
