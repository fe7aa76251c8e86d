"""The seed recipes in conf/experiment/: each composes to the settings its header states and
trains a few steps."""

import pytest
from omegaconf import OmegaConf

from colorizer.cli import CONFIG_DIR
from colorizer.run import train

RECIPES = sorted(path.stem for path in (CONFIG_DIR / "experiment").glob("*.yaml"))
# Trained in `make test` only (alpha_seed stays in `make test-fast`): gan_coco needs a COCO
# folder, fullcnn_seed builds the real 55.8 M-parameter Inception-ResNet-v2, beta_seed is the
# slowest of the plain CNNs.
SLOW_RECIPES = {"gan_coco", "fullcnn_seed", "beta_seed"}
# Keras's ImageDataGenerator(shear_range=0.2, zoom_range=0.2, rotation_range=20,
# horizontal_flip=True) of the beta and full versions.
KERAS_AUGMENTATION = {"hflip": True, "degrees": 20.0, "zoom": 0.2, "shear": 0.2}
NO_WARPS = {"degrees": 0.0, "zoom": 0.0, "shear": 0.0}
# What each recipe's header says its source did, key by key of the composed config.
STATED = {
    "alpha_seed": {
        "model._target_": "colorizer.models.alpha.AlphaColorizer", "model.optimizer": "rmsprop",
        "model.lr": 1e-3, "data.batch_size": 1, "data.image_size": 256,
        "data.augment": {"hflip": False, **NO_WARPS}, "trainer.overfit_batches": 1,
        "trainer.max_steps": 1000,
    },
    "beta_seed": {
        "model._target_": "colorizer.models.beta.BetaColorizer", "model.optimizer": "rmsprop",
        "model.lr": 1e-3, "data.batch_size": 10, "data.image_size": 256,
        "data.augment": KERAS_AUGMENTATION,
    },
    "fullcnn_seed": {
        "model._target_": "colorizer.models.fullcnn.FullCNNColorizer", "model.optimizer": "adam",
        "model.lr": 1e-3, "data.batch_size": 20, "data.image_size": 256,
        "data.augment": KERAS_AUGMENTATION,
    },
    "gan_coco": {
        "model._target_": "colorizer.models.gan.GANColorizer", "model.generator": "unet",
        "model.depth": 8, "model.lr": 2e-4, "model.betas": [0.5, 0.999],
        "model.lambda_l1": 100.0, "data._target_": "colorizer.data.coco.CocoDataModule",
        "seed": 123, "data.seed": 123, "data.subset": 10000, "data.val_fraction": 0.2,
        "data.test_subset": 2000, "data.image_size": 256, "data.batch_size": 16,
        "data.augment": {"hflip": True, **NO_WARPS}, "trainer.max_steps": 100000,
    },
}  # fmt: skip
FEW_STEPS = [
    "logger=none", "data.num_workers=0", "trainer.accelerator=cpu", "trainer.max_steps=2",
    "trainer.val_check_interval=1", "trainer.limit_val_batches=1", "trainer.limit_test_batches=1",
]  # fmt: skip


def test_every_recipe_is_checked():
    assert set(RECIPES) == set(STATED)


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_composes_to_the_settings_it_states(make_cfg, name):
    cfg = make_cfg(f"experiment={name}")
    composed = {key: OmegaConf.select(cfg, key) for key in STATED[name]}
    composed = {k: OmegaConf.to_object(v) if OmegaConf.is_config(v) else v
                for k, v in composed.items()}  # fmt: skip
    assert composed == STATED[name]
    source = (CONFIG_DIR / "experiment" / f"{name}.yaml").read_text()
    assert "Source:" in source.split("defaults:")[0]  # documented at the top


@pytest.mark.parametrize(
    "name",
    [pytest.param(n, marks=pytest.mark.slow) if n in SLOW_RECIPES else n for n in RECIPES],
)
def test_recipe_trains(make_cfg, coco_root, name):
    needs_coco = [f"data.root={coco_root}"] if name == "gan_coco" else []
    summary = train(make_cfg(f"experiment={name}", *FEW_STEPS, *needs_coco))
    assert summary["global_step"] == 2
    assert summary["test/psnr"] > 0
