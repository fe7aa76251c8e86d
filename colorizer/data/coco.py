"""COCO in its official layout, read with pycocotools.

``data.root`` holds ``annotations/instances_train2017.json`` and ``train2017/`` (and, for the
test split, ``annotations/instances_val2017.json`` and ``val2017/``). Get it from
https://cocodataset.org/#download: ``train2017.zip``, ``val2017.zip`` and
``annotations_trainval2017.zip``, unzipped into one folder.
"""

from __future__ import annotations

import contextlib
import io
import logging
import random
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from colorizer.data.base import DataError
from colorizer.data.curated import SPLITS, CuratedDataModule
from colorizer.data.images import format_reasons
from colorizer.errors import require_int

log = logging.getLogger(__name__)

# The reference GAN recipe's settings: 256² crops, batches of 16, 20 % of the train pool for
# validation, COCO's val2017 for testing.
FOLDER_DEFAULTS = {"image_size": 256, "batch_size": 16, "val_fraction": 0.2, "test_fraction": 0.0}
HOW_TO_GET = "download COCO 2017 from https://cocodataset.org/#download (see the README)"


class CocoDataModule(CuratedDataModule):
    """COCO images (optionally those showing any of ``categories``), split by seed.

    Train and val come from a seeded ``subset`` of the train annotations' images, split by
    ``val_fraction``; test is the val annotations' images (COCO's own held-out set), or, with
    ``test_annotations=None``, a ``test_fraction`` of the train pool. Every image passes the
    robust scan of :mod:`colorizer.data.images`; listed files that are missing on disk or whose
    ``file_name`` would leave the image folder are counted, never read.
    """

    source_settings = ("root", "train_annotations", "test_annotations")
    split_settings = (*CuratedDataModule.split_settings, "categories", "subset", "test_subset")

    def __init__(
        self,
        root: str,
        train_annotations: str = "annotations/instances_train2017.json",
        test_annotations: str | None = "annotations/instances_val2017.json",
        categories: Sequence[str] | None = None,
        subset: int | None = None,
        test_subset: int | None = None,
        **folder: Any,
    ) -> None:
        """``folder``: :class:`CuratedDataModule`'s options, with COCO's defaults
        (:data:`FOLDER_DEFAULTS`) where not given."""
        if not root:
            raise DataError(f"data.root is required for data=coco: {HOW_TO_GET}")
        super().__init__(root=root, **(FOLDER_DEFAULTS | folder))
        for name, value in (("subset", subset), ("test_subset", test_subset)):
            if value is not None:  # null: every image
                require_int(f"data.{name}", value, error=DataError)
        self.train_annotations = train_annotations
        self.test_annotations = test_annotations
        self.categories = list(categories) if categories else None
        self.subset = subset
        self.test_subset = test_subset

    def find_splits(self) -> dict[str, list[Path]]:
        if not self.root.is_dir():
            raise DataError(f"data.root={self.root} does not exist: {HOW_TO_GET}")
        pool = self._listed_images(self.train_annotations, self.subset, "train pool")
        root = self.root.resolve()
        if self.test_annotations is None:
            return self._split(pool, root, self.val_fraction, self.test_fraction)
        splits = self._split(pool, root, self.val_fraction, 0.0)
        splits["test"] = self._listed_images(self.test_annotations, self.test_subset, "test")
        log.info("coco: %s", ", ".join(f"{len(splits[s])} {s}" for s in SPLITS))
        return splits

    def _listed_images(self, annotations: str, subset: int | None, label: str) -> list[Path]:
        """Usable image files of one annotation file, filtered, sampled and scanned."""
        path = self.root / annotations
        if not path.is_file():
            raise DataError(f"COCO annotation file {path} is missing: {HOW_TO_GET}")
        from pycocotools.coco import COCO

        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its timing
            coco = COCO(str(path))
        ids = sorted(self._image_ids(coco, path))
        if subset is not None:
            if subset > len(ids):
                log.warning("%s: subset %d > %d images listed; using all", label, subset, len(ids))
            else:
                ids = sorted(random.Random(self.seed).sample(ids, subset))
        image_dir = self.root / path.stem.removeprefix("instances_")
        files, refused = self._resolve(coco, ids, image_dir)
        self.skipped_in_scans.update(refused)
        if refused:
            log.warning(
                "%s: %d listed images not read (%s)",
                label,
                refused.total(),
                format_reasons(refused),
            )
        if not files:
            raise DataError(f"no image of {path.name} exists under {image_dir}: {HOW_TO_GET}")
        return self._scan(image_dir, files, f"coco {label}")

    def _image_ids(self, coco: Any, path: Path) -> set[int]:
        if not self.categories:
            return set(coco.getImgIds())
        ids: set[int] = set()
        for name in self.categories:
            category = coco.getCatIds(catNms=[name])
            if not category:
                names = sorted(c["name"] for c in coco.loadCats(coco.getCatIds()))
                raise DataError(
                    f"data.categories: {name!r} is not a category of {path.name} "
                    f"(it has {len(names)}: {', '.join(names[:10])}, ...)"
                )
            # Any of the categories: a union. getImgIds(catIds=[a, b]) would give images
            # showing all of them at once, which is rarely what "dogs and cats" means.
            ids.update(coco.getImgIds(catIds=category))
        return ids

    @staticmethod
    def _resolve(coco: Any, ids: list[int], image_dir: Path) -> tuple[list[Path], Counter]:
        """Files of the listed images, refusing names that leave ``image_dir`` and missing files."""
        base = image_dir.resolve()
        files, refused = [], Counter()
        for info in coco.loadImgs(ids):
            candidate = (base / str(info["file_name"])).resolve()
            if not candidate.is_relative_to(base):
                refused["unsafe file_name"] += 1
            elif not candidate.is_file():
                refused["missing file"] += 1
            else:
                files.append(candidate)
        return files, refused
