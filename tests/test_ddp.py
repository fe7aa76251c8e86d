"""trainer=ddp: two CPU processes (gloo) train every model; metrics are those of the whole split."""

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import DictConfig

from colorizer.color import split_lab
from colorizer.errors import ConfigError
from colorizer.evaluate import evaluate
from colorizer.models import load_model
from colorizer.run import train
from tests.helpers import SMALL_MODELS

REPO = Path(__file__).resolve().parent.parent

# 8 validation and 8 test images: 2 processes x 4, so no sample is padded or duplicated.
DDP = [
    "data=synthetic", "data.num_val=8", "data.num_test=8", "data.batch_size=4", "logger=none",
    "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.max_steps=4",
    "trainer.val_check_interval=2",
]  # fmt: skip


# alpha's DDP run is in the randomness test below; beta is alpha's class (PlainCNNColorizer).
@pytest.mark.slow
@pytest.mark.parametrize("name", ["fullcnn", "gan"])
def test_ddp_metrics_equal_a_single_process_evaluation(cli, make_cfg, tmp_path, name):
    result = cli("colorizer.run", *SMALL_MODELS[name], *DDP, "hydra.run.dir=run")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "on cpu x 2 processes" in result.stdout
    second = (tmp_path / "run" / "train_ddp_process_1.log").read_text()  # rank 1's log
    assert "Initializing distributed: GLOBAL_RANK: 1, MEMBER: 2/2" in second
    assert (result.stdout + result.stderr).count("Run directory:") == 2  # rank 0: start, end
    assert_metrics_of_one_process(tmp_path / "run", make_cfg)


def assert_metrics_of_one_process(run: Path, make_cfg) -> None:
    """The run's val and test metrics (and losses) equal one process's evaluation of them."""
    summary = json.loads((run / "metrics.json").read_text())
    for split in ("val", "test"):
        cfg = make_cfg(
            f"ckpt_path={summary['best_checkpoint']}", f"split={split}", "device=cpu",
            *[arg for arg in DDP if arg.startswith("data")], config_name="evaluate",
        )  # fmt: skip
        single = evaluate(cfg)
        assert single["num_images"] == 8
        single[f"{split}/loss"] = _mean_loss(summary["best_checkpoint"], cfg.data, split)
        for metric in ("psnr", "mse", "ssim", "cf", "loss"):
            key = f"{split}/{metric}"
            assert summary[key] == pytest.approx(single[key], rel=1e-5, abs=1e-7), key


def _mean_loss(checkpoint: str, data: DictConfig, split: str) -> float:
    """The MSE loss of normalised ab over the images of ``split``, in one process."""
    model, datamodule = load_model(checkpoint), instantiate(data)
    datamodule.setup("fit" if split == "val" else "test")
    total, count = 0.0, 0
    with torch.no_grad():
        for batch in getattr(datamodule, f"{split}_dataloader")():
            l_norm, ab_norm = split_lab(batch)
            total += float(F.mse_loss(model.predict_ab(l_norm), ab_norm)) * len(batch)
            count += len(batch)
    return total / count


def test_sync_batchnorm_needs_gpus(make_cfg):
    cfg = make_cfg(*SMALL_MODELS["gan"], *DDP, "trainer.sync_batchnorm=true", "trainer.devices=1")
    with pytest.raises(ConfigError, match="sync_batchnorm=true needs GPUs"):
        train(cfg)


def _flips(run: Path, rank: int) -> dict[int, list[bool]]:
    lines = (run / f"flips-rank{rank}.jsonl").read_text().splitlines()
    return {step: flipped for step, flipped in map(json.loads, lines)}


@pytest.mark.slow
def test_each_process_draws_its_own_randomness_and_resumes_it_exactly(
    cli, make_cfg, tmp_path, monkeypatch
):
    """24 images, 2 processes x 3 batches of 4 an epoch, flipped at random on the device. The
    processes must flip differently (one seed each), and a run stopped after step 4 (mid-epoch
    2) and resumed must end with the weights of the run that was not stopped, having drawn,
    in each process, the same flips at steps 5 and 6."""
    monkeypatch.setenv("PYTHONPATH", str(REPO))  # the processes import FlipProbe from tests.helpers
    args = [
        *SMALL_MODELS["alpha"], *DDP, "data.num_train=24", "+data.augment.hflip=true",
        "trainer.deterministic=true", "trainer.max_steps=-1", "trainer.max_epochs=2",
        "trainer.val_check_interval=1.0", "trainer.check_val_every_n_epoch=1",
        "+callbacks.flips._target_=tests.helpers.FlipProbe",
        "+callbacks.flips.dirpath=${paths.output_dir}",
    ]  # fmt: skip
    for run, extra in (
        ("whole", []),
        ("cut", ["trainer.max_steps=4"]),
        ("cut", ["ckpt_path=last"]),
    ):
        result = cli("colorizer.run", *args, *extra, f"hydra.run.dir={run}")
        assert result.returncode == 0, result.stderr[-3000:]

    whole, cut = tmp_path / "whole", tmp_path / "cut"
    assert_metrics_of_one_process(whole, make_cfg)
    assert sorted(_flips(whole, 0)) == [1, 2, 3, 4, 5, 6]
    assert _flips(whole, 0) != _flips(whole, 1)
    for rank in (0, 1):
        assert _flips(cut, rank) == _flips(whole, rank), rank
    weights = [
        torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
        for run in (whole, cut)
    ]
    assert torch.load(cut / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 6
    for name, value in weights[0].items():
        assert torch.equal(weights[1][name], value), name
