"""What every architecture must do: learn colour, and reload from its checkpoint anywhere."""

import subprocess
import sys
import textwrap

import pytest
import torch
from hydra.utils import instantiate

from colorizer.registry import MODELS
from colorizer.run import train
from tests.helpers import SMALL_MODELS

QUICK = ["data=synthetic", "logger=none", "trainer.accelerator=cpu"]
# Held-out 32² synthetic scenes, one budget of batches for every registered model at its small
# settings: enough for each to beat gray clearly (measured: +5.0 to +6.3 dB).
LEARNING_BATCHES = 250


def optimizer_steps_per_batch(model) -> int:
    """What ``trainer.max_steps`` counts per batch: Lightning counts optimizer steps, one per
    batch, or, for a model that steps its optimizers itself (the GAN), one per optimizer."""
    if model.automatic_optimization:
        return 1
    optimizers = model.configure_optimizers()
    return len(optimizers) if isinstance(optimizers, list | tuple) else 1


@pytest.mark.slow
@pytest.mark.parametrize("name", MODELS.names())
def test_model_learns_colour_on_synthetic_images(make_cfg, name):
    cfg = make_cfg(
        *SMALL_MODELS[name], *QUICK, "data.image_size=32", "trainer.val_check_interval=50"
    )
    cfg.trainer.max_steps = LEARNING_BATCHES * optimizer_steps_per_batch(instantiate(cfg.model))
    summary = train(cfg)
    # Better than leaving them gray, and truly colourful.
    assert summary["test/psnr"] > summary["test/gray_psnr"] + 3.0
    assert summary["test/delta_cf"] < summary["test/gray_delta_cf"] / 2


@pytest.mark.slow
def test_every_checkpoint_loads_and_colorizes_in_a_fresh_process(checkpoint_of):
    """One process, no Hydra, no repository on sys.path: only the checkpoint files."""
    checkpoints = {name: str(checkpoint_of(name)) for name in SMALL_MODELS}
    script = textwrap.dedent(
        f"""
        import sys, torch, colorizer
        for name, path in {checkpoints!r}.items():
            model = colorizer.load_model(path)
            assert not model.training, name
            out = model.colorize(torch.rand(2, 3, 70, 90))
            assert out.shape == (2, 3, 70, 90) and 0 <= out.min() and out.max() <= 1, name
            print(type(model).__name__)
        assert "hydra" not in sys.modules, "loading a model must not need Hydra"
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        cwd=checkpoint_of("alpha").parent,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert [line.lower() for line in result.stdout.split()] == [
        f"{name}colorizer" for name in SMALL_MODELS
    ]


@pytest.mark.parametrize("name", list(SMALL_MODELS))
def test_speed_options_keep_checkpoints_compatible(make_cfg, name):
    """compile=true / channels_last=true must not rename the state dict (checkpoints load)."""
    model = instantiate(make_cfg(*SMALL_MODELS[name]).model)
    keys = list(model.state_dict())
    model.apply_speed_options(compile=True, channels_last=True)
    assert list(model.state_dict()) == keys
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(c.weight.is_contiguous(memory_format=torch.channels_last) for c in convs)
