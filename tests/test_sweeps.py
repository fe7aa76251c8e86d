"""Hyper-parameter searches (conf/sweep/) and grid multiruns, composed and run through the CLI."""

import json

import pytest
import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep
from hydra.types import RunMode
from omegaconf import OmegaConf

from colorizer import registry
from colorizer.cli import CONFIG_DIR
from tests.helpers import QUICK

SWEEPS = sorted(path.stem for path in (CONFIG_DIR / "sweep").glob("*.yaml"))
MODELS = registry.MODELS.names()
# Each job of the CLI runs below: four steps, one batch for each validation and for the test.
FEW = [*QUICK, "trainer.limit_val_batches=1", "trainer.limit_test_batches=1"]


def search_space(cfg) -> dict:
    """``hydra.sweeper.params`` parsed as Hydra parses them: key -> IntervalSweep | ChoiceSweep."""
    parser = OverridesParser.create()
    lines = [f"{key}={value}" for key, value in cfg.hydra.sweeper.params.items()]
    return {override.key_or_group: override.value() for override in parser.parse_overrides(lines)}


@pytest.mark.parametrize("name", SWEEPS)
def test_sweep_maximises_the_optimized_metric_over_keys_that_exist(make_cfg, name):
    cfg = make_cfg(f"sweep={name}")
    assert cfg.hydra.mode == RunMode.MULTIRUN  # `--multirun` may be left out
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_.endswith("OptunaSweeper")
    assert (sweeper.direction, cfg.optimized_metric) == ("maximize", "val/psnr")
    assert sweeper.sampler._target_.endswith("TPESampler") and sweeper.sampler.seed == cfg.seed
    # TPE starts from random trials: a search must go beyond them to be more than random.
    assert sweeper.n_trials > sweeper.sampler.n_startup_trials
    for key in search_space(cfg):  # Hydra refuses to override a key the config lacks
        assert OmegaConf.select(cfg, key) is not None, key
    source = (CONFIG_DIR / "sweep" / f"{name}.yaml").read_text()
    assert f"sweep={name}" in source.split("defaults:")[0]  # the command, documented at the top


@pytest.mark.parametrize("model", MODELS)
def test_optuna_searches_lr_and_batch_size_of_every_model(make_cfg, model):
    cfg = make_cfg("sweep=optuna", f"model={model}")
    space = search_space(cfg)
    assert set(space) == {"model.lr", "data.batch_size"}
    assert all(OmegaConf.select(cfg, key) is not None for key in space)
    lr = space["model.lr"]
    assert isinstance(lr, IntervalSweep) and "log" in lr.tags
    assert (lr.start, lr.end) == (1e-5, 1e-2)
    assert isinstance(space["data.batch_size"], ChoiceSweep)
    assert space["data.batch_size"].list == [8, 16, 32]


def test_optuna_gan_also_searches_the_l1_weight(make_cfg):
    cfg = make_cfg("sweep=optuna_gan")
    assert cfg.hydra.runtime.choices.model == "gan"
    assert "lambda_l1" in cfg.model
    space = search_space(cfg)
    assert set(space) == {"model.lr", "data.batch_size", "model.lambda_l1"}
    l1 = space["model.lambda_l1"]
    assert isinstance(l1, IntervalSweep) and (l1.start, l1.end) == (10, 200)


@pytest.mark.slow
def test_cli_optuna_sweep_records_the_best_trial(main_of, tmp_path):
    sweep = tmp_path / "optuna"
    result = main_of(
        "colorizer.run", "--multirun", "sweep=optuna", "hydra.sweeper.n_trials=2", "model=alpha",
        *FEW, f"hydra.sweep.dir={sweep}",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = sorted(path for path in sweep.iterdir() if path.is_dir())
    assert [job.name for job in jobs] == ["0", "1"]
    rates, psnr = [], []
    for job in jobs:
        config = yaml.safe_load((job / ".hydra" / "config.yaml").read_text())
        rates.append(config["model"]["lr"])
        assert config["data"]["batch_size"] in (8, 16, 32)
        psnr.append(json.loads((job / "metrics.json").read_text())["val/psnr"])
    assert rates[0] != rates[1]
    assert all(1e-5 <= lr <= 1e-2 for lr in rates)
    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert results["name"] == "optuna"
    assert results["best_value"] == max(psnr)
    assert results["best_params"]["model.lr"] == rates[psnr.index(max(psnr))]


# A few steps of every model through `--multirun`. The keys that keep fullcnn and gan
# small on two CPU cores exist only on those models, so each of them runs in a multirun of its own.
MULTIRUNS = {
    "alpha,beta": ["model=alpha,beta"],
    "fullcnn": ["model=fullcnn", "model.backbone=test_resnet", "model.embedding_size=64"],
    "gan": ["model=gan", "model.depth=6", "model.base_channels=8", "model.disc_channels=8"],
}


def test_every_model_is_in_a_multirun():
    assert sorted(model for models in MULTIRUNS for model in models.split(",")) == MODELS


@pytest.mark.slow
@pytest.mark.parametrize("models", MULTIRUNS)
def test_cli_multirun_trains_every_model(main_of, tmp_path, models):
    sweep = tmp_path / "multirun"
    result = main_of(
        "colorizer.run", "--multirun", *MULTIRUNS[models], *FEW,
        "data.image_size=64", "data.batch_size=4", f"hydra.sweep.dir={sweep}",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = sorted(path.name for path in sweep.iterdir() if path.is_dir())
    assert jobs == [str(job) for job in range(len(models.split(",")))]
    for job, model in zip(jobs, models.split(","), strict=True):
        metrics = json.loads((sweep / job / "metrics.json").read_text())
        assert (metrics["model"], metrics["global_step"]) == (model, 4)
        assert metrics["val/psnr"] > 0
