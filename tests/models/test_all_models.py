"""What every architecture must do: learn colour, and reload from its checkpoint anywhere."""

import subprocess
import sys
import textwrap

import pytest

from colorizer.run import train

# Small but real settings per model, for two CPU cores (the GAN's U-Net at depth 6 works at 64²).
SMALL = {
    "alpha": ["model=alpha", "model.optimizer=adam"],
    "beta": ["model=beta", "model.lr=3e-4"],  # the seed recipe's RMSprop (Keras defaults)
    "fullcnn": ["model=fullcnn", "model.embedding_size=75"],
    "gan": ["model=gan", "model.depth=6", "model.base_channels=16", "model.disc_channels=16"],
}
QUICK = ["data=synthetic", "logger=none", "trainer.accelerator=cpu"]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["beta", "fullcnn", "gan"])  # alpha: tests/models/test_alpha.py
def test_model_learns_colour_on_synthetic_images(make_cfg, name):
    steps = 600 if name == "gan" else 200  # the GAN takes two optimizer steps per batch
    cfg = make_cfg(
        *SMALL[name], *QUICK, f"trainer.max_steps={steps}", "trainer.val_check_interval=100"
    )
    summary = train(cfg)
    assert summary["test/psnr"] > summary["test/gray_psnr"] + 3.0
    assert summary["test/delta_cf"] < summary["test/gray_delta_cf"] / 2


@pytest.mark.parametrize("name", list(SMALL))
def test_checkpoint_loads_and_colorizes_in_a_fresh_process(make_cfg, tmp_path, name):
    train(make_cfg(*SMALL[name], *QUICK, "trainer=debug"))
    checkpoint = tmp_path / "run" / "checkpoints" / "last.ckpt"
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
