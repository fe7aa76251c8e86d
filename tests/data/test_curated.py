"""CuratedDataModule on real folder trees: splits, skipped files, errors, embedded default."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from colorizer.data import CuratedDataModule, DataError
from colorizer.data.base import seeded_split
from colorizer.data.curated import EMBEDDED_SPLITS

# 14 at the top, 6 nested two levels down: the seeded split must reach into subfolders.
FLAT_NAMES = [f"img_{i:02d}.jpg" for i in range(14)] + [f"nested/deep/p{i}.png" for i in range(6)]


def split_names(module: CuratedDataModule, root: Path) -> dict[str, list[str]]:
    assert module.splits is not None
    return {
        split: [p.relative_to(root).as_posix() for p in paths]
        for split, paths in module.splits.items()
    }


def first_batch(loader) -> torch.Tensor:
    return next(iter(loader))


@pytest.fixture
def flat_root(tmp_path: Path, write_photos) -> Path:
    root = tmp_path / "flat"
    write_photos(root, FLAT_NAMES)
    return root


def test_subfolders_are_used_as_given(tmp_path: Path, write_photos) -> None:
    for split, count in (("train", 6), ("val", 2), ("test", 3)):
        write_photos(tmp_path / split, [f"{split}_{i}.jpg" for i in range(count)])
    module = CuratedDataModule(str(tmp_path), image_size=24, batch_size=4, num_workers=0)
    module.setup("fit")
    names = split_names(module, tmp_path)
    assert names == {
        "train": [f"train/train_{i}.jpg" for i in range(6)],
        "val": ["val/val_0.jpg", "val/val_1.jpg"],
        "test": [f"test/test_{i}.jpg" for i in range(3)],
    }
    train = first_batch(module.train_dataloader())
    assert train.dtype == torch.uint8 and train.shape == (4, 3, 24, 24)
    val = first_batch(module.val_dataloader())
    assert val.dtype == torch.uint8 and val.shape == (2, 3, 24, 24)
    assert first_batch(module.test_dataloader()).shape == (3, 3, 24, 24)


def test_missing_val_folder_is_split_off_train(
    tmp_path: Path, write_photos, caplog: pytest.LogCaptureFixture
) -> None:
    write_photos(tmp_path / "train", [f"t{i}.jpg" for i in range(10)])
    write_photos(tmp_path / "test", ["x.jpg", "y.jpg"])
    module = CuratedDataModule(str(tmp_path), num_workers=0, val_fraction=0.2)
    with caplog.at_level(logging.INFO, logger="colorizer.data"):
        module.setup("fit")
    names = split_names(module, tmp_path)
    assert len(names["val"]) == 2 and len(names["train"]) == 8
    assert all(name.startswith("train/") for name in names["val"])
    assert not set(names["val"]) & set(names["train"])
    assert names["test"] == ["test/x.jpg", "test/y.jpg"]
    assert "no val/ folder" in caplog.text


def test_seeded_split_is_deterministic_disjoint_and_complete(flat_root: Path) -> None:
    first = CuratedDataModule(str(flat_root), num_workers=0, seed=7)
    second = CuratedDataModule(str(flat_root), num_workers=0, seed=7)
    first.setup("fit")
    second.setup("fit")
    names = split_names(first, flat_root)
    assert names == split_names(second, flat_root)
    assert [len(names[s]) for s in ("train", "val", "test")] == [14, 3, 3]
    everything = names["train"] + names["val"] + names["test"]
    assert sorted(everything) == sorted(FLAT_NAMES)  # disjoint and complete

    other_seed = CuratedDataModule(str(flat_root), num_workers=0, seed=8)
    other_seed.setup("fit")
    assert split_names(other_seed, flat_root) != names


def test_seeded_split_ignores_creation_order_and_location(
    tmp_path: Path, flat_root: Path, write_photos
) -> None:
    elsewhere = tmp_path / "copy" / "placed" / "elsewhere"
    write_photos(elsewhere, reversed(FLAT_NAMES))
    a = CuratedDataModule(str(flat_root), num_workers=0)
    b = CuratedDataModule(str(elsewhere), num_workers=0)
    a.setup()
    b.setup()
    assert split_names(a, flat_root) == split_names(b, elsewhere)


def test_seeded_split_sizes() -> None:
    assert [len(s) for s in seeded_split(list("abc"), 0.15, 0.15, seed=0)] == [1, 1, 1]
    assert [len(s) for s in seeded_split(list("ab"), 0.15, 0.15, seed=0)] == [2, 0, 0]
    assert [len(s) for s in seeded_split(list(range(10)), 0.15, 0.15, seed=0)] == [6, 2, 2]
    assert [len(s) for s in seeded_split(list(range(10)), 0.0, 0.3, seed=0)] == [7, 0, 3]
    shuffled = seeded_split([5, 3, 9, 1, 7, 2], 0.2, 0.2, seed=1)
    assert shuffled == seeded_split([1, 2, 3, 5, 7, 9], 0.2, 0.2, seed=1)
    with pytest.raises(DataError, match="val_fraction"):
        seeded_split(list(range(10)), 0.6, 0.5, seed=0)


def test_corrupt_files_are_skipped_and_counted(
    flat_root: Path, truncated_jpeg: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    (flat_root / "broken.jpg").write_bytes(truncated_jpeg)
    (flat_root / "nested" / "error_page.png").write_text("<html>403 Forbidden</html>")
    module = CuratedDataModule(str(flat_root), num_workers=0)
    with caplog.at_level(logging.INFO, logger="colorizer.data"):
        module.setup("fit")
    assert "all: 22 found, 20 used, 2 skipped (1 not an image, 1 truncated or corrupt)" in (
        caplog.text
    )
    assert "all: seeded split (seed 42): 14 train, 3 val, 3 test" in caplog.text
    assert sorted(sum(split_names(module, flat_root).values(), [])) == sorted(FLAT_NAMES)


def test_file_broken_after_the_scan_is_replaced(
    flat_root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    module = CuratedDataModule(str(flat_root), image_size=16, num_workers=0)
    module.setup("fit")
    assert module.train_set is not None and module.splits is not None
    module.splits["train"][0].write_bytes(b"")  # rewritten by something else mid-run
    with caplog.at_level(logging.WARNING, logger="colorizer.data"):
        items = [module.train_set[i] for i in range(len(module.train_set))]
    assert all(item.shape == (3, 16, 16) and item.dtype == torch.uint8 for item in items)
    assert caplog.text.count("empty file") == 1  # warned once, not once per use


def test_nonexistent_root_is_a_one_line_error(tmp_path: Path) -> None:
    module = CuratedDataModule(str(tmp_path / "nope"), num_workers=0)
    with pytest.raises(DataError) as raised:
        module.setup("fit")
    message = str(raised.value)
    assert "\n" not in message
    assert f"data.root={tmp_path / 'nope'} does not exist" in message
    assert "leave it unset for the embedded default" in message


def test_empty_folder_is_a_one_line_error(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("not a picture")
    with pytest.raises(DataError, match="contains no image files") as raised:
        CuratedDataModule(str(tmp_path), num_workers=0).setup("fit")
    assert "\n" not in str(raised.value)


def test_folder_without_usable_images_says_why(tmp_path: Path, make_photo) -> None:
    make_photo(32, 32).convert("L").save(tmp_path / "gray.png")
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(DataError) as raised:
        CuratedDataModule(str(tmp_path), num_workers=0).setup("fit")
    assert "none of the 2 image files" in str(raised.value)
    assert "(1 empty file, 1 grayscale)" in str(raised.value)


def test_bad_settings_fail_at_construction(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"data.val_fraction \+ data.test_fraction"):
        CuratedDataModule(str(tmp_path), val_fraction=0.5, test_fraction=0.5)
    with pytest.raises(DataError, match="data.batch_size=0"):
        CuratedDataModule(str(tmp_path), batch_size=0)


def test_embedded_default_photographs() -> None:
    module = CuratedDataModule(image_size=32, batch_size=4, num_workers=0)
    module.setup("fit")
    assert module.splits is not None
    names = {split: [path.name for path in paths] for split, paths in module.splits.items()}
    assert names == {split: list(files) for split, files in EMBEDDED_SPLITS.items()}
    # the stereo pair (near duplicates) must not straddle training and evaluation
    assert {"motorcycle_left.png", "motorcycle_right.png"} <= set(names["train"])
    batch = first_batch(module.train_dataloader())
    assert batch.dtype == torch.uint8 and batch.shape == (4, 3, 32, 32)
    val = first_batch(module.val_dataloader())
    assert val.dtype == torch.uint8 and val.shape[1:] == (3, 32, 32)


def test_augmentation_is_reproducible_with_worker_processes(flat_root: Path) -> None:
    def batches() -> list[torch.Tensor]:
        module = CuratedDataModule(str(flat_root), image_size=20, batch_size=5, num_workers=2)
        module.setup("fit")
        return [first_batch(module.train_dataloader()), first_batch(module.val_dataloader())]

    first, second = batches(), batches()
    for batch in first:
        assert batch.dtype == torch.uint8 and batch.shape[1:] == (3, 20, 20)
    assert first[0].shape[0] == 5
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))


def test_a_checkpoint_from_before_a_new_setting_still_reads_the_same_images(flat_root: Path):
    """Evaluation reuses a training run's split when it read the same images; a checkpoint
    written before a setting that has nothing to do with the split existed (here
    memory_cache_mb) still counts as the same images, another source or kind does not."""
    module = CuratedDataModule(str(flat_root), seed=7)
    trained = {k: v for k, v in module.hparams.items() if k != "memory_cache_mb"}
    assert module.split_differences({**trained, "seed": 3}) == {"seed": 3}
    assert module.split_differences({**trained, "root": "/elsewhere"}) is None
    assert module.split_differences({k: v for k, v in trained.items() if k != "seed"}) is None
    assert module.split_differences({**trained, "num_train": 10}) is None
    # Before data.max_megapixels, every run had Pillow's guard: what null says now.
    older = {k: v for k, v in trained.items() if k != "max_megapixels"}
    assert module.split_differences(older) == {}
    larger = CuratedDataModule(str(flat_root), seed=7, max_megapixels=500)
    assert larger.split_differences(older) == {"max_megapixels": None}
