"""Experiment loggers for real: W&B in offline mode and TensorBoard, read back from disk."""

from __future__ import annotations

import json
import logging
import struct
import time
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from wandb.proto import wandb_internal_pb2

from colorizer.callbacks import triplet_grid
from colorizer.loggers import wandb_logger
from colorizer.run import train
from tests.helpers import QUICK

WANDB_BLOCK = 32768  # W&B run files use LevelDB's log format: 32 KiB blocks of records


def wandb_records(path: Path) -> list[wandb_internal_pb2.Record]:
    """Every record of an offline W&B run file (``run-ID.wandb``)."""
    data, position, pending, records = path.read_bytes(), 7, b"", []
    assert data.startswith(b":W&B")
    while position + 7 <= len(data):
        if WANDB_BLOCK - position % WANDB_BLOCK < 7:  # a block's tail too short for a header
            position += WANDB_BLOCK - position % WANDB_BLOCK
            continue
        _, length, kind = struct.unpack("<IHB", data[position : position + 7])
        if position + 7 + length > len(data):  # W&B's writer is still writing this piece
            break
        payload = data[position + 7 : position + 7 + length]
        position += 7 + length
        pending = payload if kind in (1, 2) else pending + payload
        if kind in (1, 4):  # a full record, or the last piece of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
    return records


def finished_wandb_records(path: Path, timeout: float = 60.0) -> list[wandb_internal_pb2.Record]:
    """The run file's records once W&B's writer (a separate process) has written its end."""
    deadline = time.monotonic() + timeout
    while True:
        records = wandb_records(path)
        if any(r.HasField("exit") for r in records) or time.monotonic() > deadline:
            return records
        time.sleep(0.2)


def _item_key(item) -> str:
    return item.key or "/".join(item.nested_key)


def wandb_sample_grids(records: list[wandb_internal_pb2.Record]) -> list[tuple[str, int, str]]:
    """(stage, trainer step, media file relative to the run's ``files/``) of every sample grid
    the run logged, in order."""
    grids = []
    for record in records:
        if not record.HasField("history"):
            continue
        items = {_item_key(i): json.loads(i.value_json) for i in record.history.item}
        for stage in ("val", "test"):
            if f"samples/{stage}/filenames" in items:
                (file,) = items[f"samples/{stage}/filenames"]
                grids.append((stage, int(items["trainer/global_step"]), file))
    return grids


def local_grid(run: Path, stage: str, step: int) -> np.ndarray:
    """The grid the run wrote to ``run/samples/`` for that stage and step: uint8 [H, W, 3]."""
    name = "test.png" if stage == "test" else f"step_{step:06d}.png"
    return png_pixels((run / "samples" / name).read_bytes())


def png_pixels(data: bytes) -> np.ndarray:
    """A PNG file's pixels as they are stored (no mode conversion): uint8 [H, W, C]."""
    return np.asarray(Image.open(BytesIO(data)))


def assert_same_grid(logged: np.ndarray, local: np.ndarray, where: str) -> None:
    """The logger's image is the run directory's grid, pixel for pixel (PNG is lossless)."""
    assert logged.dtype == np.uint8 and logged.shape == local.shape, where
    assert (logged[:2] == 255).all(), f"{where}: the white border (1.0) is not 255"
    mean_logged, mean_local = logged.mean(), local.mean()
    assert np.array_equal(logged, local), f"{where}: mean {mean_logged:.2f} vs {mean_local:.2f}"


def assert_one_grid_per_validation(grids: list[tuple[str, int]], run: Path) -> None:
    """One validation grid per local ``step_N.png`` (and no other), and one test grid."""
    val_steps = [step for stage, step in grids if stage == "val"]
    files = sorted(int(p.stem.removeprefix("step_")) for p in (run / "samples").glob("step_*"))
    assert sorted(val_steps) == files and len(files) >= 2
    assert [stage for stage, _ in grids].count("test") == 1


@pytest.fixture
def no_wandb_credentials(tmp_path, monkeypatch):
    for name in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no ~/.netrc from `wandb login`
    monkeypatch.setenv("WANDB_SILENT", "true")


def test_wandb_goes_offline_without_credentials_and_records_everything(
    make_cfg, tmp_path, caplog, no_wandb_credentials
):
    caplog.set_level(logging.WARNING, logger="colorizer.loggers")
    train(make_cfg("model=alpha", *QUICK, "logger=wandb", "logger.wandb.tags=[smoke]"))
    assert "logging offline" in caplog.text and "wandb sync" in caplog.text
    (run_file,) = (tmp_path / "run" / "wandb").glob("offline-run-*/run-*.wandb")
    records = finished_wandb_records(run_file)
    history = {_item_key(i) for r in records if r.HasField("history") for i in r.history.item}
    assert {"train/loss", "val/psnr", "val/gray_psnr", "test/psnr", "test/delta_cf"} <= history
    assert {"samples/val/_type", "samples/test/_type"} <= history
    config = {
        _item_key(u): u.value_json for r in records if r.HasField("config") for u in r.config.update
    }
    assert "AlphaColorizer" in config["config"]  # the whole composed config, as the run config
    run = next(r.run for r in records if r.HasField("run"))
    assert run.project == "colorizer" and list(run.tags) == ["smoke"]
    grids = wandb_sample_grids(records)
    assert_one_grid_per_validation([(stage, step) for stage, step, _ in grids], tmp_path / "run")
    for stage, step, file in grids:
        logged = png_pixels((run_file.parent / "files" / file).read_bytes())
        assert_same_grid(logged, local_grid(tmp_path / "run", stage, step), f"W&B {file}")


@pytest.mark.slow
def test_wandb_makes_one_run_per_multirun_job(main_of, tmp_path, no_wandb_credentials):
    sweep = tmp_path / "sweep"
    result = main_of(
        "colorizer.run", "--multirun", "model=alpha", "model.lr=1e-3,3e-4", *QUICK,
        "logger=wandb", f"hydra.sweep.dir={sweep}",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    run_ids, rates = set(), set()
    for job in ("0", "1"):  # each job its own directory, config, results and W&B run
        assert (sweep / job / "metrics.json").is_file()
        (run_file,) = (sweep / job / "wandb").glob("offline-run-*/run-*.wandb")
        run_ids.add(run_file.stem)
        lr = yaml.safe_load((sweep / job / ".hydra" / "config.yaml").read_text())["model"]["lr"]
        rates.add(lr)
        config = {
            _item_key(u): u.value_json
            for r in finished_wandb_records(run_file)
            if r.HasField("config")
            for u in r.config.update
        }
        assert json.loads(config["config"])["model"]["lr"] == lr
    assert len(run_ids) == 2 and rates == {1e-3, 3e-4}


def test_tensorboard_gets_scalars_and_sample_grids(make_cfg, tmp_path):
    train(make_cfg("model=alpha", *QUICK, "logger=tensorboard"))
    (log_dir,) = {p.parent for p in (tmp_path / "run" / "tensorboard").rglob("events.out.*")}
    accumulator = EventAccumulator(str(log_dir), size_guidance={"images": 0}).Reload()
    scalars, images = set(accumulator.Tags()["scalars"]), set(accumulator.Tags()["images"])
    assert {"train/loss", "val/psnr", "val/gray_psnr", "test/psnr"} <= scalars
    assert {"samples/val", "samples/test"} <= images
    grids = [
        (stage, event.step, png_pixels(event.encoded_image_string))
        for stage in ("val", "test")
        for event in accumulator.Images(f"samples/{stage}")
    ]
    assert_one_grid_per_validation([(stage, step) for stage, step, _ in grids], tmp_path / "run")
    for stage, step, logged in grids:
        where = f"TensorBoard samples/{stage} at step {step}"
        assert_same_grid(logged, local_grid(tmp_path / "run", stage, step), where)


def test_sample_grid_is_uint8_rgb_rows_of_gray_prediction_truth():
    """Float triplets in [0, 1] (out-of-range values clipped) -> the uint8 [H, W, 3] grid that
    is written and logged: rounded, white 2-pixel padding, a row per image."""
    triplets = torch.zeros(2, 3, 3, 4, 5)
    triplets[0, 1] = 0.73  # the first image's prediction: 186.15 -> 186
    triplets[1, 2, 0] = 0.999  # the second image's truth, red: 254.7 -> 255, not 254
    triplets[1, 0] = torch.tensor([1.5, -0.5, 0.5]).view(3, 1, 1)  # clipped to 255, 0; 128
    grid = triplet_grid(triplets)
    assert grid.dtype == np.uint8 and grid.shape == (2 + 2 * 6, 2 + 3 * 7, 3)
    assert (grid[:2] == 255).all() and (grid[:, :2] == 255).all()
    tile = {(row, column): grid[2 + 6 * row : 6 + 6 * row, 2 + 7 * column : 7 + 7 * column]
            for row in range(2) for column in range(3)}  # fmt: skip
    assert (tile[0, 0] == 0).all() and (tile[0, 1] == 186).all() and (tile[0, 2] == 0).all()
    assert (tile[1, 0] == [255, 0, 128]).all() and (tile[1, 2] == [255, 0, 0]).all()


def test_csv_logger_keeps_the_history_and_the_config(make_cfg, tmp_path):
    train(make_cfg("model=alpha", *QUICK, "logger=csv"))
    history = (tmp_path / "run" / "csv" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"train/loss", "val/psnr", "test/psnr"} <= set(history)
    hparams = yaml.safe_load((tmp_path / "run" / "csv" / "hparams.yaml").read_text())
    assert hparams["config"]["model"]["_target_"].endswith("AlphaColorizer")


def test_wandb_auto_is_online_for_a_self_hosted_server_it_is_logged_in_to(
    tmp_path, caplog, no_wandb_credentials, monkeypatch
):
    """`wandb login --host http://127.0.0.1:8080` writes a netrc entry for that host; with
    WANDB_BASE_URL pointing there, mode=auto logs online and says which host and why."""
    home = tmp_path / "home"
    home.mkdir()
    netrc = home / ".netrc"
    netrc.write_text(f"machine 127.0.0.1:8080\n  login user\n  password local-{'a' * 40}\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:8080")
    caplog.set_level(logging.INFO, logger="colorizer.loggers")
    logger = wandb_logger(str(tmp_path / "run"), mode="auto")
    assert logger._offline is False
    assert "W&B: logging online to http://127.0.0.1:8080 (credentials from" in caplog.text

    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9999")  # logged in elsewhere only
    caplog.clear()
    assert wandb_logger(str(tmp_path / "run2"), mode="auto")._offline is True
    assert "no credentials for http://127.0.0.1:9999" in caplog.text
