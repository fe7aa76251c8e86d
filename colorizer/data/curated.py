"""A folder of images: ``train/``, ``val/``, ``test/`` subfolders, or one folder split by seed."""

from __future__ import annotations

import importlib.resources
import logging
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from colorizer.data.base import (
    TRAIN_CROP_SCALE,
    DataError,
    ImageDataModule,
    ImageFileDataset,
    check_fractions,
    seeded_split,
)
from colorizer.data.cache import cache_folder, cache_side, resized_copies
from colorizer.data.images import (
    IMAGE_EXTENSIONS,
    ScanResult,
    bomb_note,
    format_reasons,
    format_summary,
    list_image_files,
    pixel_limit,
    scan_images,
)

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")

# The colour photographs scikit-image ships (no download), with a fixed split. The package's
# other images are grayscale (camera, coins, moon, page, text, ...), synthetic charts or
# textures (color, chessboard, logo, brick, grass, gravel) or not photographs: none teaches
# colour. The split is fixed rather than seeded because motorcycle_left/right are a stereo
# pair (near duplicates, which must not straddle train and evaluation) and because with nine
# images a random split can leave only an astronomical or microscope image to evaluate on.
EMBEDDED_SPLITS = {
    "train": (
        "astronaut.png",
        "rocket.jpg",
        "motorcycle_left.png",
        "motorcycle_right.png",
        "hubble_deep_field.jpg",
        "retina.jpg",
        "ihc.png",
    ),
    "val": ("chelsea.png",),
    "test": ("coffee.png",),
}
EMBEDDED_PHOTOS = tuple(name for names in EMBEDDED_SPLITS.values() for name in names)


def embedded_photo_dir() -> Path:
    """Where scikit-image keeps its bundled sample images (``skimage/data``)."""
    return Path(str(importlib.resources.files("skimage.data")))


class CuratedDataModule(ImageDataModule):
    """Images from a folder tree, or scikit-image's colour photographs when ``root`` is None.

    If ``root`` has a ``train/`` folder, ``train/``, ``val/`` and ``test/`` are used as given
    (a missing ``val/`` or ``test/`` is carved out of ``train/`` by seed); otherwise every
    image under ``root`` is split by seed. Every file is validated once at :meth:`setup`;
    unusable and grayscale ones are skipped and counted in one log line per folder.

    Batches: uint8 ``[B, 3, image_size, image_size]``, RGB.
    """

    source_settings = ("root",)
    split_settings = (
        *("seed", "val_fraction", "test_fraction", "min_size", "exclude_grayscale"),
        "max_megapixels",
    )
    settings_added = {"max_megapixels": None}  # Pillow's guard, which every run had before

    def __init__(
        self,
        root: str | None = None,
        image_size: int = 128,
        batch_size: int = 8,
        num_workers: int = 2,
        val_fraction: float = 0.15,
        test_fraction: float = 0.15,
        seed: int = 42,
        min_size: int = 16,
        exclude_grayscale: bool = True,
        augment: Mapping[str, Any] | None = None,
        resized_cache: str | None = None,
        memory_cache_mb: float = 1024,
        max_megapixels: float | None = None,
    ) -> None:
        super().__init__(image_size, batch_size, num_workers, seed, augment)
        self.save_hyperparameters()
        check_fractions(val_fraction, test_fraction)  # a config error should surface now
        self.root = Path(root).expanduser() if root is not None else None
        self.val_fraction = val_fraction
        self.test_fraction = test_fraction
        self.min_size = min_size
        self.exclude_grayscale = exclude_grayscale
        self.resized_cache = resized_cache
        if isinstance(memory_cache_mb, bool) or not (
            isinstance(memory_cache_mb, int | float) and memory_cache_mb >= 0
        ):
            raise DataError(f"data.memory_cache_mb={memory_cache_mb!r} must be a number >= 0")
        self.memory_cache_mb = memory_cache_mb
        if max_megapixels is not None and (
            isinstance(max_megapixels, bool)
            or not isinstance(max_megapixels, int | float)
            or not max_megapixels > 0
        ):
            raise DataError(f"data.max_megapixels={max_megapixels!r} must be a positive number")
        self.max_megapixels = max_megapixels
        self.splits: dict[str, list[Path]] | None = None
        self.skipped_in_scans: Counter[str] = Counter()  # what every scan skipped, by reason

    def setup(self, stage: str | None = None) -> None:
        if self.splits is None:
            self.splits = self.find_splits()
        splits, folder = dict(self.splits), None
        # Training crops (scale >= 0.35 of the area) need a source of side² pixels, no more.
        side = cache_side(self.image_size, TRAIN_CROP_SCALE[0])
        if self.resized_cache is not None:
            with pixel_limit(self.max_megapixels):  # its threads decode under this limit
                splits["train"] = resized_copies(
                    splits["train"], self.resized_cache, side, min_side=self.image_size
                )
            folder = cache_folder(self.resized_cache, side, min_side=self.image_size)
        # Each loader process keeps its share of the memory budget.
        memory = int(self.memory_cache_mb * 2**20) // max(1, self.num_workers)
        self.train_set, self.val_set, self.test_set = (
            ImageFileDataset(
                splits[split],
                self.train_transform() if split == "train" else self.eval_transform(),
                min_size=self.min_size,
                decode_size=side if split == "train" else self.image_size,
                reduce_to=(side, self.image_size) if split == "train" else None,
                cache_folder=folder if split == "train" else None,
                seed=self.seed,
                memory_bytes=memory,
                max_megapixels=self.max_megapixels,
            )
            for split in SPLITS
        )

    def find_splits(self) -> dict[str, list[Path]]:
        """The image files of each split, ``{"train": [...], "val": [...], "test": [...]}``.

        The hook a data source built on this class overrides (COCO reads annotation files, the
        internet source its download cache); :meth:`setup` calls it once and builds the
        datasets, the resized cache and the transforms from what it returns. Raise
        :class:`DataError` with one line saying what is missing and how to get it.
        """
        if self.root is None:
            return self._embedded_splits()
        self._check_root(self.root)
        if (self.root / "train").is_dir():
            return self._split_subfolders(self.root)
        return self._split_one_folder(self.root, list_image_files(self.root), "all")

    def all_images(self) -> list[Path]:
        """Every usable image of the source, validated once, with no split (what
        ``colorizer.evaluate split=all`` scores)."""
        if self.root is None:
            splits = self._embedded_splits()
            return [path for split in SPLITS for path in splits[split]]
        self._check_root(self.root)
        return self._scan(self.root, list_image_files(self.root), "all")

    @staticmethod
    def _check_root(root: Path) -> None:
        if not root.exists():
            raise DataError(
                f"data.root={root} does not exist: point data.root at a folder of "
                "images, or leave it unset for the embedded default"
            )
        if not root.is_dir():
            raise DataError(f"data.root={root} is a file: point it at a folder of images")

    def _embedded_splits(self) -> dict[str, list[Path]]:
        directory = embedded_photo_dir()
        files = [directory / name for name in EMBEDDED_PHOTOS if (directory / name).is_file()]
        usable = set(self._scan(directory, files, "embedded scikit-image photos"))
        splits = {
            split: [directory / name for name in names if directory / name in usable]
            for split, names in EMBEDDED_SPLITS.items()
        }
        if not all(splits.values()):
            raise DataError(
                f"the embedded default photos are incomplete in {directory}: reinstall "
                "scikit-image (make install) or set data.root to a folder of images"
            )
        log.info(
            "embedded default: fixed split: %s", ", ".join(f"{len(splits[s])} {s}" for s in SPLITS)
        )
        return splits

    def _split_one_folder(self, root: Path, files: list[Path], label: str) -> dict[str, list[Path]]:
        usable = self._scan(root, files, label)
        if len(usable) < 3:
            raise DataError(
                f"data.root={root} has {len(usable)} usable image(s); a seeded train/val/test "
                "split needs at least 3: add images or provide train/, val/ and test/ folders"
            )
        splits = self._split(usable, root, self.val_fraction, self.test_fraction)
        log.info(
            "%s: seeded split (seed %d): %s",
            label,
            self.seed,
            ", ".join(f"{len(splits[s])} {s}" for s in SPLITS),
        )
        return splits

    def _split_subfolders(self, root: Path) -> dict[str, list[Path]]:
        splits = {
            split: self._scan(root / split, list_image_files(root / split), split)
            for split in SPLITS
            if (root / split).is_dir()
        }
        missing = [split for split in SPLITS if split not in splits]
        if missing:
            carved = self._split(
                splits["train"],
                root / "train",
                self.val_fraction if "val" in missing else 0.0,
                self.test_fraction if "test" in missing else 0.0,
            )
            splits["train"] = carved["train"]
            for split in missing:
                splits[split] = carved[split]
                log.info(
                    "%s: no %s/ folder under %s, so %d images split off train/ (seed %d)",
                    split,
                    split,
                    root,
                    len(carved[split]),
                    self.seed,
                )
        return splits

    def _split(
        self, paths: list[Path], root: Path, val_fraction: float, test_fraction: float
    ) -> dict[str, list[Path]]:
        # Names relative to the root, so the split does not depend on where the folder lives.
        def name(path: Path) -> str:
            return path.relative_to(root).as_posix()

        parts = seeded_split(paths, val_fraction, test_fraction, self.seed, key=name)
        splits = dict(zip(SPLITS, parts, strict=True))
        # A zero fraction asks for an empty split (e.g. no validation); anything else must not be.
        for split, fraction in zip(SPLITS, (1.0, val_fraction, test_fraction), strict=True):
            if fraction > 0 and not splits[split]:
                raise DataError(
                    f"the {split} split of {root} is empty ({len(paths)} usable images, "
                    f"data.val_fraction={val_fraction}, data.test_fraction={test_fraction}): "
                    f"add images, raise the fraction or provide a {split}/ folder"
                )
        return splits

    def _scan(self, folder: Path, files: list[Path], label: str) -> list[Path]:
        if not files:
            raise DataError(
                f"data.root: {folder} contains no image files "
                f"({', '.join(sorted(IMAGE_EXTENSIONS))}): add images or fix data.root"
            )
        result, _ = self.scan_and_log(files, label)
        if not result.paths:
            raise DataError(
                f"data.root: none of the {len(files)} image files in {folder} is usable "
                f"({self.skip_reasons(result)}): add colour photographs (at least "
                f"{self.min_size} px) or fix data.root"
            )
        return result.paths

    def scan_and_log(self, files: Iterable[Path], label: str) -> tuple[ScanResult, str]:
        """Validate ``files`` once (:func:`scan_images` with this source's size and grayscale
        rules) and log one line of what was used and skipped (a warning when any was); returns
        the result and that line, for the caller's own "too few images" error."""
        files = list(files)
        with pixel_limit(self.max_megapixels):  # its threads decode under this limit
            result = scan_images(
                files, min_size=self.min_size, exclude_grayscale=self.exclude_grayscale
            )
        self.skipped_in_scans.update(result.skipped)
        summary = format_summary(label, len(files), result) + self._bomb_note(result)
        log.log(logging.WARNING if result.rejected else logging.INFO, "%s", summary)
        return result, summary

    def skip_reasons(self, result: ScanResult) -> str:
        """Why ``result``'s files were skipped, in one phrase, bombs explained."""
        return format_reasons(result.skipped) + self._bomb_note(result)

    def _bomb_note(self, result: ScanResult) -> str:
        """``; decompression bombs: over the 89.5-megapixel limit: data.max_megapixels= raises
        it; ...`` when ``result`` skipped any, else nothing."""
        if not result.skipped["decompression bomb"]:
            return ""
        return f"; decompression bombs: {bomb_note(self.max_megapixels, 'data.max_megapixels')}"
