"""data=coco on a COCO-format annotation file and images that the test writes."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from colorizer.data import CocoDataModule, DataError
from tests.helpers import COCO_TRAIN_LABELS


def _ids(paths: list[Path]) -> set[int]:
    return {int(path.stem) for path in paths}


def test_official_layout_splits_and_refusals(coco_root, caplog):
    caplog.set_level(logging.INFO, logger="colorizer.data")
    module = CocoDataModule(str(coco_root), image_size=32, batch_size=4, num_workers=0)
    module.setup("fit")
    splits = {name: _ids(paths) for name, paths in module.splits.items()}
    assert splits["train"] | splits["val"] == set(COCO_TRAIN_LABELS)  # gray, escaping, missing: out
    assert not splits["train"] & splits["val"] and len(splits["val"]) == 1  # 20 % of 7
    assert splits["test"] == {201, 202, 203}  # COCO's own val2017
    log = caplog.text
    assert "2 listed images not read (1 missing file, 1 unsafe file_name)" in log
    assert "1 grayscale" in log
    assert all("escape" not in str(p) for paths in module.splits.values() for p in paths)
    batch = next(iter(module.train_dataloader()))
    assert batch.shape == (4, 3, 32, 32)


def test_categories_select_images_showing_any_of_them(coco_root):
    module = CocoDataModule(str(coco_root), categories=["dog", "cat"], test_annotations=None,
                            val_fraction=0.2, test_fraction=0.2, num_workers=0)  # fmt: skip
    module.setup("fit")
    chosen = set().union(*(_ids(paths) for paths in module.splits.values()))
    # pycocotools' getImgIds(catIds=[cat, dog]) would give only image 3 (both at once).
    assert chosen == {1, 2, 3, 6, 9}  # not 4, 5: person only


def test_seeded_subset(coco_root):
    def pool(seed: int) -> set[int]:
        module = CocoDataModule(str(coco_root), subset=5, seed=seed, num_workers=0)
        module.setup("fit")
        return _ids(module.splits["train"]) | _ids(module.splits["val"])

    first = pool(123)
    assert len(first) <= 5 and first == pool(123)
    assert any(pool(seed) != first for seed in (1, 2, 3))


def test_mistakes_name_the_fix(coco_root, tmp_path):
    with pytest.raises(DataError, match=r"data.root=.*/nowhere does not exist: download COCO"):
        CocoDataModule(str(tmp_path / "nowhere")).setup("fit")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"instances_train2017.json is missing.*cocodataset.org"):
        CocoDataModule(str(tmp_path / "empty")).setup("fit")
    with pytest.raises(DataError, match=r"'zebra' is not a category .*cat, dog, person"):
        CocoDataModule(str(coco_root), categories=["zebra"]).setup("fit")
    with pytest.raises(DataError, match="data.subset=0"):
        CocoDataModule(str(coco_root), subset=0)


def test_trains_on_coco(make_cfg, coco_root, tmp_path):
    from colorizer.run import train

    cfg = make_cfg(
        "model=alpha", "data=coco", f"data.root={coco_root}", "data.image_size=32",
        "data.batch_size=4", "data.num_workers=0", "trainer=debug", "logger=none",
        "trainer.accelerator=cpu",
    )  # fmt: skip
    summary = train(cfg)
    assert summary["data"] == "coco" and summary["test/psnr"] > 0
