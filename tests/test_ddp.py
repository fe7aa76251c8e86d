"""trainer=ddp: two CPU processes (gloo) train every model; metrics are those of the whole split."""

import json

import pytest

from colorizer.errors import ConfigError
from colorizer.evaluate import evaluate
from colorizer.run import train
from tests.conftest import SMALL_MODELS

# 8 validation and 8 test images: 2 processes x 4, so no sample is padded or duplicated.
DDP = [
    "data=synthetic", "data.num_val=8", "data.num_test=8", "data.batch_size=4", "logger=none",
    "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.max_steps=4",
    "trainer.val_check_interval=2",
]  # fmt: skip


@pytest.mark.parametrize("name", list(SMALL_MODELS))
def test_ddp_metrics_equal_a_single_process_evaluation(cli, make_cfg, tmp_path, name):
    result = cli("colorizer.run", *SMALL_MODELS[name], *DDP, "hydra.run.dir=run")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Initializing distributed: GLOBAL_RANK: 1, MEMBER: 2/2" in result.stderr
    summary = json.loads((tmp_path / "run" / "metrics.json").read_text())
    for split in ("val", "test"):
        cfg = make_cfg(
            f"ckpt_path={summary['best_checkpoint']}", f"split={split}", "device=cpu",
            *[arg for arg in DDP if arg.startswith("data")], config_name="evaluate",
        )  # fmt: skip
        single = evaluate(cfg)
        assert single["num_images"] == 8
        for metric in ("psnr", "mse", "ssim", "cf"):
            key = f"{split}/{metric}"
            assert summary[key] == pytest.approx(single[key], rel=1e-5, abs=1e-7), key


def test_sync_batchnorm_needs_gpus(make_cfg):
    cfg = make_cfg(*SMALL_MODELS["gan"], *DDP, "trainer.sync_batchnorm=true", "trainer.devices=1")
    with pytest.raises(ConfigError, match="sync_batchnorm=true needs GPUs"):
        train(cfg)
