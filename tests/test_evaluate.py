"""The evaluation entry point: in process against training's numbers, and as the real CLI."""

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from omegaconf.errors import MissingMandatoryValue
from PIL import Image
from torchmetrics.functional.image.lpips import learned_perceptual_image_patch_similarity
from torchvision.models import AlexNet_Weights

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
    hub = tmp_path / "torch" / "hub" / "checkpoints"
    assert skipped == (
        f"{SKIPPED}FID: no weights-inception-2015-12-05-6726825d.pth in {hub} (or "
        f"fid_weights=PATH); LPIPS: no alexnet-owt-7be5be79.pth in {hub})"
    )
    with pytest.raises(ConfigError) as missing:
        perceptual_metrics(str(tmp_path / "missing.pth"))
    assert str(missing.value) == (
        f"fid_weights={tmp_path / 'missing.pth'} does not exist: pass FID's Inception weights "
        "file (pt_inception-2015-12-05-6726825d.pth) or null"
    )


def test_fid_is_skipped_without_torch_fidelity(no_local_weights, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch_fidelity.feature_extractor_inceptionv3", None)
    _, skipped = perceptual_metrics()
    assert skipped.startswith(
        "FID, LPIPS: skipped (weights not available locally: FID: package torch-fidelity is "
        "not installed (pip install torch-fidelity); LPIPS: no "
    )


def test_fid_and_lpips_from_local_weights_compare_predictions_with_truths(local_weights):
    """FID keeps the truths' Inception features as the real ones and the predictions' as the
    generated ones; LPIPS is 0 for identical images and grows with the difference."""
    metrics, skipped = perceptual_metrics(str(local_weights))
    assert skipped is None and sorted(metrics) == ["fid", "lpips"]
    generator = torch.Generator().manual_seed(0)
    truth = torch.rand(2, 3, 32, 32, generator=generator)
    prediction = truth * 0.5
    fid, lpips = metrics["fid"], metrics["lpips"]
    fid.update(prediction, truth)
    with torch.no_grad():
        for images, features in (
            (truth, fid.real_features_sum),
            (prediction, fid.fake_features_sum),
        ):
            expected = fid.inception((images * 255).byte()).double().sum(dim=0)
            torch.testing.assert_close(features, expected)
    scores = []
    for distorted in (truth, truth * 0.8, prediction):
        lpips.reset()
        lpips.update(distorted, truth)
        scores.append(float(lpips.compute()))
    assert scores[0] == 0 < scores[1] < scores[2], scores
    # Images in [0, 1]; torchmetrics' function takes AlexNet's [-1, 1].
    direct = learned_perceptual_image_patch_similarity(prediction * 2 - 1, truth * 2 - 1, "alex")
    assert scores[2] == pytest.approx(float(direct), rel=1e-5)


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
def local_weights(tmp_path, monkeypatch) -> Path:
    """FID's and LPIPS's networks, randomly initialised, where evaluate looks for them: the
    Inception (torch-fidelity's) as a ``fid_weights`` file, whose path is returned, and
    AlexNet (torchvision's) in torch hub's cache under TORCH_HOME. The real weights are
    release files (README, Sweeps and evaluation): built here, nothing is downloaded."""
    from torch_fidelity import feature_extractor_inceptionv3 as fidelity

    torch.manual_seed(0)
    with monkeypatch.context() as patch:  # build the network without its weights
        patch.setattr(fidelity, "load_state_dict_from_url", lambda *args, **kwargs: {})
        patch.setattr(fidelity.FeatureExtractorInceptionV3, "load_state_dict", lambda *a: None)
        inception = fidelity.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    for conv in (m for m in inception.modules() if isinstance(m, torch.nn.Conv2d)):
        # He initialisation keeps activations alive through 40 layers; PyTorch's default
        # shrinks them towards 0, where every set of images would have the same features.
        torch.nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
    path = tmp_path / "inception.pth"
    torch.save(inception.state_dict(), path)
    hub = tmp_path / "torch" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    # LPIPS reads AlexNet's convolutions only: its classifier is stored as one broadcast zero.
    alexnet = {key: value if key.startswith("features.") else torch.zeros(1).expand(value.shape)
               for key, value in torchvision.models.alexnet().state_dict().items()}  # fmt: skip
    torch.save(alexnet, hub / Path(AlexNet_Weights.DEFAULT.url).name)
    return path


@pytest.mark.slow  # Inception at 299² on the CPU, and FID's 2048 x 2048 matrix square roots
def test_fid_and_lpips_are_scored_when_their_weights_are_on_disk(
    trained, make_cfg, tmp_path, local_weights
):
    cfg = make_cfg(f"ckpt_path={trained['best_checkpoint']}", "data=synthetic", *SYNTHETIC,
                   f"fid_weights={local_weights}", config_name="evaluate")  # fmt: skip
    summary = evaluate(cfg)
    assert summary["skipped_metrics"] is None
    scores = {key: summary[f"test/{key}"] for key in ("fid", "lpips", "gray_fid", "gray_lpips")}
    assert all(math.isfinite(value) and value > 0 for value in scores.values()), scores
    report = (tmp_path / "run" / "report.md").read_text()
    assert "| PSNR (dB) | MSE | SSIM | CF | ΔCF | FID | LPIPS | images |" in report
    # Identical images score 0, and so do the metrics built alone.
    metrics, skipped = perceptual_metrics(str(local_weights))
    assert skipped is None and sorted(metrics) == ["fid", "lpips"]
    truth = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    same = {}
    for name, metric in metrics.items():
        metric.update(truth, truth)
        same[name] = float(metric.compute())
    assert same["lpips"] == 0 and abs(same["fid"]) < 1e-3 * scores["fid"], (same, scores)

    cfg = make_cfg(f"ckpt_path={trained['best_checkpoint']}", "data=synthetic", *SYNTHETIC,
                   f"fid_weights={tmp_path / 'missing.pth'}", config_name="evaluate")  # fmt: skip
    with pytest.raises(ConfigError, match="fid_weights=.*missing.pth does not exist"):
        evaluate(cfg)
