"""The training entry point, in process and as the real CLI."""

import json
import re

import numpy as np
import pytest
import torch
import yaml
from hydra.utils import instantiate
from PIL import Image

from colorizer.models import load_model
from colorizer.run import train
from tests.helpers import QUICK, SMALL_MODELS, assert_one_line_error, grid_tiles

METRICS_KEYS = {
    "val/psnr", "val/mse", "test/psnr", "test/mse", "test/ssim", "test/cf", "test/delta_cf",
    "test/gray_psnr", "test/gray_mse", "model", "data", "global_step", "train_images_per_s",
}  # fmt: skip


def test_train_returns_and_writes_every_metric(make_cfg, tmp_path):
    # Throughput is timed from the second batch on (by default the sixth: none of 4 steps).
    cfg = make_cfg("model=alpha", *QUICK, "callbacks.throughput.warmup_batches=1")
    summary = train(cfg)
    run = tmp_path / "run"
    written = json.loads((run / "metrics.json").read_text())
    assert set(written) >= METRICS_KEYS
    assert written == json.loads(json.dumps(summary))
    assert (written["model"], written["data"]) == ("alpha", "synthetic")
    assert written["global_step"] == 4
    assert written["test/psnr"] > 0 and 0 <= written["test/mse"] < 1
    rate = written["train_images_per_s"]
    assert isinstance(rate, float) and rate > 0, rate
    assert (run / "checkpoints" / "last.ckpt").is_file()
    assert list((run / "checkpoints").glob("best-step*.ckpt"))

    # samples/test.png: the first 8 test images, each a row of gray | prediction | truth.
    datamodule = instantiate(cfg.data)
    datamodule.setup("test")
    images = next(iter(datamodule.test_dataloader()))[:8]
    expected = load_model(written["best_checkpoint"]).sample_triplets(images)  # [8, 3, 3, S, S]
    expected = (expected * 255).round().permute(0, 1, 3, 4, 2).numpy()
    tiles = grid_tiles(np.asarray(Image.open(run / "samples" / "test.png")), 8, 64)
    gray, prediction, truth = (tiles[:, column].astype(int) for column in range(3))
    differences = {
        "truth vs the test images": np.abs(truth - images.permute(0, 2, 3, 1).numpy()).max(),
        "gray vs the gray baseline": np.abs(gray - expected[:, 0]).max(),
        "gray's colour (max - min of R, G, B)": np.ptp(gray, axis=-1).max(),
        "prediction vs the best checkpoint's": np.abs(prediction - expected[:, 1]).max(),
    }
    wrong = {what: int(levels) for what, levels in differences.items() if levels > 1}
    assert not wrong, f"grid columns off by more than a level: {wrong}"
    assert np.abs(prediction - truth).mean() > 5 and np.abs(prediction - gray).mean() > 1


@pytest.mark.slow
def test_cli_run_leaves_the_run_directory(cli, tmp_path):
    run = tmp_path / "cli-run"
    result = cli("colorizer.run", "model=alpha", *QUICK, f"hydra.run.dir={run}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert (run / ".hydra" / "config.yaml").is_file()
    config = yaml.safe_load((run / ".hydra" / "config.yaml").read_text())
    assert config["model"]["_target_"].endswith("AlphaColorizer")
    assert (run / "checkpoints" / "last.ckpt").is_file()
    assert sorted(p.name for p in (run / "samples").glob("*.png"))
    metrics = json.loads((run / "metrics.json").read_text())
    assert set(metrics) >= METRICS_KEYS
    assert "gray baseline" in result.stdout and str(run) in result.stdout


@pytest.mark.slow
def test_cli_default_data_is_the_embedded_photographs(main_of, tmp_path):
    run = tmp_path / "curated"
    args = ["trainer=debug", "logger=none", "data.num_workers=0", f"hydra.run.dir={run}"]
    result = main_of("colorizer.run", *args)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["data"] == "curated" and metrics["test/psnr"] > 10

    # The console: phases, progress with a rate, one line per validation, the table, and
    # the one warning that matters (once); Lightning's chatter only in the log file.
    console = result.stdout + result.stderr
    for noise in ("litlogger", "LeafSpec", "FLOPs", "eval mode", "logging interval",
                  "GPU available", "Restoring states", "Traceback"):  # fmt: skip
        assert noise not in console, noise
    assert console.count("warning: PretrainedWeightsMissing: No pretrained weights") == 1
    assert "training fullcnn: 6.54 M trainable parameters (+ 55.8 M frozen), on cpu" in console
    validations = [line for line in console.splitlines() if " · val psnr " in line]
    assert [line.split(" · ")[0] for line in validations] == ["step 2", "step 4"]
    assert all("psnr" in line and "(gray " in line and " · ssim " in line for line in validations)
    rates = re.findall(r"step 4/4 .* (\d+\.\d+) steps/s", console)
    assert rates and float(rates[-1]) > 0
    assert "gray baseline" in result.stdout
    assert "Restoring states from the checkpoint path" in (run / "run.log").read_text()


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["data.root=/nonexistent/photos"], ["data.root", "/nonexistent/photos"]),
        (["model.lr=-1", *QUICK], ["model.lr"]),
        (["model.optimizer=adagrad", *QUICK], ["model.optimizer", "rmsprop"]),
        (["data=coco", "data.root=/nonexistent/coco"], ["cocodataset.org"]),
    ],
    ids=["missing-data", "bad-lr", "bad-optimizer", "missing-coco"],
)
def test_user_errors_end_in_one_line(main_of, tmp_path, args, fragments):
    result = main_of("colorizer.run", *args, f"hydra.run.dir={tmp_path / 'err'}")
    assert_one_line_error(result, *fragments)


EPOCHS_OF_2_BATCHES = [
    "data.num_train=4", "data.batch_size=2", "trainer.max_steps=-1", "trainer.max_epochs=3",
    "trainer.val_check_interval=1.0", "trainer.check_val_every_n_epoch=2",
]  # fmt: skip


@pytest.mark.parametrize(
    ("name", "steps", "args"),
    [
        # gan: 3 batches of 2 optimizer steps each, validated every 2 batches (at step 4)
        ("gan", 6, ["trainer.max_steps=6", "trainer.val_check_interval=2"]),
        ("alpha", 5, ["trainer.max_steps=5", "trainer.val_check_interval=2"]),
        ("alpha", 6, EPOCHS_OF_2_BATCHES),  # validated after epoch 2 of 3
    ],
    ids=["gan-steps", "alpha-steps", "alpha-epochs"],
)
def test_the_end_of_every_run_is_validated_and_checkpointed(make_cfg, tmp_path, name, steps, args):
    summary = train(make_cfg(*SMALL_MODELS[name], *QUICK, *args))
    run = tmp_path / "run"
    assert summary["global_step"] == steps
    assert (run / "samples" / f"step_{steps:06d}.png").is_file()  # a validation of the last state
    last = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")
    assert last["global_step"] == steps
