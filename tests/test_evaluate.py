"""The evaluation entry point: in process against training's numbers, and as the real CLI."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf.errors import MissingMandatoryValue
from PIL import Image

from colorizer.data.curated import CuratedDataModule
from colorizer.data.evaluation import eval_dataset, stack_by_size
from colorizer.error_lines import describe
from colorizer.errors import ConfigError
from colorizer.evaluate import evaluate
from colorizer.metrics import perceptual_metrics
from colorizer.run import train
from tests.helpers import QUICK, assert_one_line_error, train_run

SKIPPED = "FID, LPIPS: skipped (weights not available locally: "
# Small and quick; the 16 test images fit trainer=debug's 2 test batches, so all are tested.
SYNTHETIC = ["data.image_size=32", "data.batch_size=8", "data.num_val=8", "data.num_test=16"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    """A tiny alpha trained on synthetic data by colorizer.run: its metrics.json content."""
    return train_run(tmp_path_factory.mktemp("train"), ["model=alpha", *QUICK, *SYNTHETIC])


@pytest.fixture
def no_local_weights(monkeypatch, tmp_path):
    """An empty torch hub cache, so FID and LPIPS are skipped whatever this machine holds."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))


def write_photos(folder, sizes: list[tuple[int, int]]) -> None:
    """Colourful PNGs (hue gradients with noise) of the given (height, width)."""
    rng = np.random.default_rng(0)
    for i, (height, width) in enumerate(sizes):
        y, x = np.mgrid[0:height, 0:width] / max(height, width)
        rgb = np.stack([x, y, 1 - (x + y) / 2], axis=-1) * 200 + rng.uniform(
            0, 55, (height, width, 3)
        )
        path = folder / f"sub{i % 2}" / f"photo{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rgb.astype(np.uint8)).save(path)


def test_test_split_reproduces_the_training_runs_test_metrics(
    trained, make_cfg, tmp_path, no_local_weights
):
    cfg = make_cfg(
        f"ckpt_path={trained['best_checkpoint']}", "data=synthetic", *SYNTHETIC,
        config_name="evaluate",
    )  # fmt: skip
    summary = evaluate(cfg)
    run = tmp_path / "run"
    assert json.loads((run / "metrics.json").read_text()) == json.loads(json.dumps(summary))
    assert summary["num_images"] == 16 and summary["split"] == "test"
    assert (summary["model"], summary["data"]) == ("alpha", "synthetic")
    expected = {k: v for k, v in trained.items() if k.startswith("test/") and k != "test/loss"}
    assert len(expected) == 10
    assert {key: summary[key] for key in expected} == pytest.approx(expected, rel=1e-5, abs=1e-6)

    report = (run / "report.md").read_text()
    psnr, gray_psnr = (f"{summary[key]:.4f}" for key in ("test/psnr", "test/gray_psnr"))
    assert f"| model (alpha) | {psnr} |" in report and f"| gray baseline | {gray_psnr} |" in report
    assert "PSNR (dB) | MSE | SSIM | CF | ΔCF | images" in report
    assert "sRGB in [0, 1]; PSNR (data_range 1) per image, then averaged" in report
    assert "CF: Hasler-Süsstrunk colourfulness on 0-255" in report
    assert SKIPPED in report and "FID |" not in report
    # 8 rows of gray | prediction | truth, 32 px tiles with 2 px padding.
    assert Image.open(run / "samples.png").size == (3 * 34 + 2, 8 * 34 + 2)


@pytest.mark.parametrize("size_option", ["size=256", "native=true"])
def test_split_all_evaluates_every_image_in_the_folder_uncropped(
    trained, make_cfg, tmp_path, no_local_weights, size_option
):
    write_photos(tmp_path / "photos", [(256, 256)] * 3)
    cfg = make_cfg(
        f"ckpt_path={trained['best_checkpoint']}", "split=all", f"data.root={tmp_path / 'photos'}",
        "data.num_workers=0", "batch_size=2", size_option, config_name="evaluate",
    )  # fmt: skip
    summary = evaluate(cfg)
    assert summary["num_images"] == 3 and summary["split"] == "all"
    assert summary["all/gray_cf"] < 1 and summary["all/gray_delta_cf"] > 20  # colourful truths
    assert all(math.isfinite(summary[f"all/{name}"]) for name in ("psnr", "mse", "ssim"))
    # 3 rows (fewer images than num_images_in_grid) of 256 px tiles.
    assert Image.open(tmp_path / "run" / "samples.png").size == (3 * 258 + 2, 3 * 258 + 2)
    report = (tmp_path / "run" / "report.md").read_text()
    assert "| model (alpha) |" in report and report.count(" | 3 |") == 2


def test_native_size_keeps_each_image_and_batches_equal_sizes(tmp_path):
    sizes = [(256, 256), (200, 300), (256, 256)]
    write_photos(tmp_path, sizes)
    datamodule = CuratedDataModule(root=str(tmp_path), image_size=128, num_workers=0)
    native = eval_dataset(datamodule, "all", native=True)
    assert sorted(tuple(native[i].shape[1:]) for i in range(3)) == sorted(sizes)
    batches = stack_by_size([native[i] for i in range(3)])
    assert sorted(batch.shape[0] for batch in batches) == [1, 2]
    resized = eval_dataset(datamodule, "all", native=False)
    assert {tuple(resized[i].shape) for i in range(3)} == {(3, 128, 128)}


def test_train_split_is_evaluated_without_random_crops(tmp_path):
    write_photos(tmp_path, [(200, 300)] * 6)
    datamodule = CuratedDataModule(root=str(tmp_path), image_size=64, num_workers=0)
    dataset = eval_dataset(datamodule, "train", native=False)
    assert torch.equal(dataset[0], dataset[0]) and dataset[0].shape == (3, 64, 64)


def test_perceptual_metrics_are_skipped_without_local_weights(no_local_weights, tmp_path):
    metrics, skipped = perceptual_metrics()
    assert metrics == {}
    assert skipped.startswith(SKIPPED)
    assert "FID: " in skipped
    assert f"LPIPS: no alexnet-owt-7be5be79.pth in {tmp_path / 'torch' / 'hub'}" in skipped


def test_split_all_is_every_image_of_a_folder_source(trained, make_cfg):
    cfg = make_cfg(f"ckpt_path={trained['best_checkpoint']}", "split=all", config_name="evaluate")
    summary = evaluate(cfg)  # no data.root: the nine embedded photos, train, val and test alike
    assert (summary["split"], summary["num_images"], summary["image_size"]) == ("all", 9, 32)
    cfg = make_cfg(f"ckpt_path={trained['best_checkpoint']}", "split=all", "data=synthetic",
                   config_name="evaluate")  # fmt: skip
    with pytest.raises(ConfigError, match="split=all needs a folder of images"):
        evaluate(cfg)


def test_a_forgotten_checkpoint_is_named(make_cfg):
    with pytest.raises(MissingMandatoryValue) as error:
        evaluate(make_cfg(config_name="evaluate"))
    assert describe(error.value) == "ckpt_path is required: add ckpt_path=VALUE to the command"


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["ckpt_path=/nonexistent/model.ckpt"], ["checkpoint /nonexistent/model.ckpt"]),
        (["ckpt_path=x.ckpt", "split=bogus"], ["split=bogus", "test, val, train, all"]),
    ],
    ids=["missing-checkpoint", "unknown-split"],
)
def test_user_errors_end_in_one_line(main_of, tmp_path, args, fragments):
    result = main_of("colorizer.evaluate", *args, f"hydra.run.dir={tmp_path / 'err'}")
    assert_one_line_error(result, *fragments)


def test_evaluation_scores_the_training_runs_own_test_split(make_cfg, tmp_path, no_local_weights):
    """Trained with seed 123, evaluated with evaluate's default seed (42): the test split must
    still be the run's, not a split that holds images the model trained on."""
    photos = tmp_path / "photos"
    write_photos(photos, [(40, 48)] * 12)
    data = [
        "data=curated", f"data.root={photos}", "data.image_size=32", "data.batch_size=4",
        "data.num_workers=0", "data.val_fraction=0.25", "data.test_fraction=0.25",
    ]  # fmt: skip
    trained = train(make_cfg("model=alpha", *data, "seed=123", *QUICK[1:]))

    def test_files(seed: int) -> list[str]:
        datamodule = CuratedDataModule(
            root=str(photos), seed=seed, val_fraction=0.25, test_fraction=0.25
        )
        datamodule.setup("test")
        return [str(path) for path in datamodule.test_set.paths]

    assert test_files(123) != test_files(42)  # so agreeing below is no coincidence
    checkpoint = f"ckpt_path={trained['best_checkpoint']}"
    summary = evaluate(make_cfg(checkpoint, *data, config_name="evaluate"))
    assert summary["num_images"] == 3
    assert (tmp_path / "run" / "images.txt").read_text().splitlines() == test_files(123)
    assert summary["test/psnr"] == pytest.approx(trained["test/psnr"], rel=1e-5)

    # Asking for another split of the same images, explicitly, is refused in one line.
    with pytest.raises(ConfigError, match="seed=42 .* trained with data.seed=123"):
        evaluate(make_cfg(checkpoint, *data, "seed=42", config_name="evaluate"))


@pytest.fixture
def inception_weights(tmp_path, monkeypatch) -> Path:
    """A weights file of torch-fidelity's FID Inception, randomly initialised (the real one is
    its release pt_inception-2015-12-05-6726825d.pth): built here, nothing downloaded."""
    from torch_fidelity import feature_extractor_inceptionv3 as fidelity

    with monkeypatch.context() as patch:  # build the network without its weights
        patch.setattr(fidelity, "load_state_dict_from_url", lambda *args, **kwargs: {})
        patch.setattr(fidelity.FeatureExtractorInceptionV3, "load_state_dict", lambda *a: None)
        torch.manual_seed(0)
        network = fidelity.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    path = tmp_path / "inception.pth"
    torch.save(network.state_dict(), path)
    return path


@pytest.mark.slow  # Inception at 299² on the CPU, four sets of 16 images
def test_fid_is_scored_from_a_local_weights_file(trained, make_cfg, tmp_path, inception_weights,
                                                 no_local_weights):  # fmt: skip
    cfg = make_cfg(f"ckpt_path={trained['best_checkpoint']}", "data=synthetic", *SYNTHETIC,
                   f"fid_weights={inception_weights}", config_name="evaluate")  # fmt: skip
    summary = evaluate(cfg)
    assert math.isfinite(summary["test/fid"]) and summary["test/fid"] >= 0
    assert math.isfinite(summary["test/gray_fid"])
    assert summary["skipped_metrics"].startswith("LPIPS: skipped")  # FID no longer is
    assert "| FID |" in (tmp_path / "run" / "report.md").read_text().replace("FID | LPIPS", "FID |")
    cfg = make_cfg(f"ckpt_path={trained['best_checkpoint']}", "data=synthetic", *SYNTHETIC,
                   f"fid_weights={tmp_path / 'missing.pth'}", config_name="evaluate")  # fmt: skip
    with pytest.raises(ConfigError, match="fid_weights=.*missing.pth does not exist"):
        evaluate(cfg)
