"""The GPU speed flags, exercised on the CPU: torch.compile (inductor), channels_last, bf16."""

import csv
import math

import pytest
import torch._dynamo

from colorizer.evaluate import evaluate
from colorizer.run import train
from tests.helpers import QUICK, SMALL_MODELS

FLAGS = ["compile=true", "channels_last=true", "trainer.precision=bf16-mixed"]
# 32 test images: trainer=debug's 2 test batches of 16 cover them all, as evaluate does.
DATA = ["data=synthetic", "data.num_val=32", "data.num_test=32", "data.batch_size=16"]
GRAPHS = {"fullcnn": 7, "gan": 4}


# fullcnn trains through the shared single-optimizer step that alpha and beta use (with a frozen
# network besides), the GAN through manual optimization: together every training path.
@pytest.mark.slow
@pytest.mark.parametrize("name", list(GRAPHS))
def test_speed_flags_train_and_score_as_a_float32_evaluation_does(make_cfg, tmp_path, name):
    torch._dynamo.utils.counters.clear()
    summary = train(make_cfg(*SMALL_MODELS[name], *QUICK, *DATA, *FLAGS, "logger=csv"))
    # Each network compiles once for training and once for evaluation (validation, test and
    # the sample grids, which show the validation step's own predictions). fullcnn's frozen
    # classifier only evaluates, in no_grad from the start: once. The GAN's discriminator
    # trains twice (as D, and frozen under G's loss) and never evaluates.
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == GRAPHS[name]
    (log,) = (tmp_path / "run").rglob("metrics.csv")
    losses = [
        float(value)
        for row in csv.DictReader(log.open())
        for key, value in row.items()
        if key.startswith("train/") and value
    ]
    assert losses and all(math.isfinite(loss) for loss in losses)

    # The same checkpoint, evaluated uncompiled in float32 on the same test images.
    reference = evaluate(
        make_cfg(f"ckpt_path={summary['best_checkpoint']}", *DATA, "device=cpu",
                 config_name="evaluate")
    )  # fmt: skip
    assert reference["num_images"] == 32
    for metric in ("psnr", "mse", "ssim", "cf", "delta_cf"):
        gray = f"test/gray_{metric}"  # no network involved: must be identical
        assert summary[gray] == pytest.approx(reference[gray], rel=1e-6, abs=1e-9), gray
        # The network ran in bf16 (8 significant bits, ~0.4 %) during the run's test.
        key = f"test/{metric}"
        assert summary[key] == pytest.approx(reference[key], rel=5e-3), key
