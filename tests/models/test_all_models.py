"""What every architecture must do: learn colour, and reload from its checkpoint anywhere."""

import subprocess
import sys
import textwrap

import pytest
import torch
from hydra.utils import instantiate

from colorizer.run import train
from tests.conftest import SMALL_MODELS

QUICK = ["data=synthetic", "logger=none", "trainer.accelerator=cpu"]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["beta", "fullcnn", "gan"])  # alpha: tests/models/test_alpha.py
def test_model_learns_colour_on_synthetic_images(make_cfg, name):
    steps = 600 if name == "gan" else 200  # the GAN takes two optimizer steps per batch
    cfg = make_cfg(
        *SMALL_MODELS[name], *QUICK, f"trainer.max_steps={steps}", "trainer.val_check_interval=100"
    )
    summary = train(cfg)
    assert summary["test/psnr"] > summary["test/gray_psnr"] + 3.0
    assert summary["test/delta_cf"] < summary["test/gray_delta_cf"] / 2


@pytest.mark.parametrize("name", list(SMALL_MODELS))
def test_checkpoint_loads_and_colorizes_in_a_fresh_process(checkpoint_of, name):
    checkpoint = checkpoint_of(name)
    script = textwrap.dedent(
        f"""
        import sys, torch, colorizer
        model = colorizer.load_model({str(checkpoint)!r})
        assert not model.training
        assert "hydra" not in sys.modules, "loading a model must not need Hydra"
        out = model.colorize(torch.rand(2, 3, 70, 90))
        assert out.shape == (2, 3, 70, 90) and 0 <= out.min() and out.max() <= 1
        print(type(model).__name__)
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().lower() == f"{name}colorizer"


@pytest.mark.parametrize("name", list(SMALL_MODELS))
def test_speed_options_keep_checkpoints_compatible(make_cfg, name):
    """compile=true / channels_last=true must not rename the state dict (checkpoints load)."""
    model = instantiate(make_cfg(*SMALL_MODELS[name]).model)
    keys = list(model.state_dict())
    model.apply_speed_options(compile=True, channels_last=True)
    assert list(model.state_dict()) == keys
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(c.weight.is_contiguous(memory_format=torch.channels_last) for c in convs)
