"""The seed recipes in conf/experiment/: each composes as documented and trains a few steps."""

import pytest

from colorizer.cli import CONFIG_DIR
from colorizer.run import train

RECIPES = sorted(path.stem for path in (CONFIG_DIR / "experiment").glob("*.yaml"))
# Trained in `make test` only (alpha_seed stays in `make test-fast`): gan_coco needs a COCO
# folder, fullcnn_seed builds the real 55.8 M-parameter Inception-ResNet-v2, beta_seed is the
# slowest of the plain CNNs.
SLOW_RECIPES = {"gan_coco", "fullcnn_seed", "beta_seed"}
EXPECTED = {
    "alpha_seed": ("AlphaColorizer", "rmsprop", 1),
    "beta_seed": ("BetaColorizer", "rmsprop", 10),
    "fullcnn_seed": ("FullCNNColorizer", "adam", 20),
    "gan_coco": ("GANColorizer", "adam", 16),
}
FEW_STEPS = [
    "logger=none", "data.num_workers=0", "trainer.accelerator=cpu", "trainer.max_steps=2",
    "trainer.val_check_interval=1", "trainer.limit_val_batches=1", "trainer.limit_test_batches=1",
]  # fmt: skip


def test_every_recipe_is_checked():
    assert set(RECIPES) == set(EXPECTED)


@pytest.mark.parametrize(
    "name",
    [pytest.param(n, marks=pytest.mark.slow) if n in SLOW_RECIPES else n for n in RECIPES],
)
def test_recipe_composes_and_trains(make_cfg, coco_root, name):
    needs_coco = [f"data.root={coco_root}"] if name == "gan_coco" else []
    cfg = make_cfg(f"experiment={name}", *FEW_STEPS, *needs_coco)
    model_class, optimizer, batch_size = EXPECTED[name]
    assert cfg.model._target_.endswith(model_class)
    assert (cfg.model.get("optimizer", "adam"), cfg.data.batch_size) == (optimizer, batch_size)
    source = (CONFIG_DIR / "experiment" / f"{name}.yaml").read_text()
    assert "Source:" in source.split("defaults:")[0]  # documented at the top
    summary = train(cfg)
    assert summary["global_step"] == 2
    assert summary["test/psnr"] > 0
