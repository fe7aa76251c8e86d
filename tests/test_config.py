"""Every YAML in conf/ composes with the real Hydra and instantiates."""

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from colorizer.cli import CONFIG_DIR
from colorizer.models.base import ColorizationModule

GROUPS = ("model", "data", "trainer", "logger", "callbacks", "paths", "experiment", "sweep")
OPTIONS = [
    (group, path.stem) for group in GROUPS for path in sorted((CONFIG_DIR / group).glob("*.yaml"))
]


# Options with a required key (`???`): a value that needs no file, since building a
# datamodule must not touch the disk (that happens in prepare_data / setup).
REQUIRED = {
    "coco": ["data.root=/data/coco"],
    "gan_coco": ["data.root=/data/coco"],
    "internet": ["data.urls=/data/urls.txt"],
    "shards": ["data.root=/data/shards"],
}


def test_every_group_has_options():
    assert {group for group, _ in OPTIONS} == set(GROUPS)


@pytest.mark.parametrize(("group", "option"), OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_config_composes_and_instantiates(make_cfg, group, option):
    overrides = [f"{group}={option}", *REQUIRED.get(option, [])]
    if group == "trainer" and not torch.cuda.is_available():
        overrides.append("trainer.accelerator=cpu")  # compose the GPU preset, build it on the CPU
    cfg = make_cfg(*overrides)
    assert cfg.hydra.runtime.choices[group] == option
    for key in ("data.image_size", "data.batch_size", "data.num_workers", "model.lr", "seed"):
        assert cfg_value(cfg, key) is not None, key

    model = instantiate(cfg.model)
    assert isinstance(model, ColorizationModule)
    datamodule = instantiate(cfg.data)
    assert datamodule.hparams.get("batch_size", cfg.data.batch_size) == cfg.data.batch_size
    callbacks = [instantiate(node) for node in cfg.callbacks.values()]
    loggers = [instantiate(node) for node in (cfg.logger or {}).values()]
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    assert trainer.max_steps == cfg.trainer.max_steps


def cfg_value(cfg, dotted: str):
    node = cfg
    for part in dotted.split("."):
        node = node[part]
    return node


def test_run_directory_follows_hydra(make_cfg, tmp_path):
    cfg = make_cfg("model=alpha")
    assert cfg.paths.output_dir == str(tmp_path / "run")
    assert cfg.callbacks.checkpoint.dirpath == str(tmp_path / "run" / "checkpoints")


IMAGE_SOURCES = ("curated", "coco", "internet")


@pytest.mark.parametrize("source", IMAGE_SOURCES)
def test_image_sources_share_one_base_config(make_cfg, source):
    """Sizes, split and augmentation are written once (data/common/images.yaml); a source's
    file holds only what is its own or differs."""
    common = OmegaConf.load(CONFIG_DIR / "data" / "common" / "images.yaml")
    own = OmegaConf.load(CONFIG_DIR / "data" / f"{source}.yaml")
    assert list(own.defaults) == ["common/images@_here_", "_self_"]
    cfg = make_cfg(f"data={source}", *REQUIRED.get(source, []))
    for key in common:
        if key == "seed":  # ${seed}: the run's seed
            assert cfg.data.seed == cfg.seed
        else:
            assert cfg.data[key] == (own[key] if key in own else common[key]), key


@pytest.mark.parametrize("source", IMAGE_SOURCES)
def test_image_source_configs_match_their_constructors(make_cfg, tmp_path, source):
    """A config's values are its class's Python defaults (augmentation aside: on in training
    configs, off for code that builds a module itself), and it sets nothing the class lacks."""
    required = {"curated": {}, "coco": {"root": "/data/coco"},
                "internet": {"urls": str(tmp_path / "photos.txt")}}[source]  # fmt: skip
    cfg = make_cfg(f"data={source}", *[f"data.{key}={value}" for key, value in required.items()])
    configured = instantiate(cfg.data)
    direct = type(configured)(**required)
    assert {k for k in cfg.data if not k.startswith("_")} <= set(direct.hparams)
    assert {k: v for k, v in configured.hparams.items() if k != "augment"} == {
        k: v for k, v in direct.hparams.items() if k != "augment"
    }
