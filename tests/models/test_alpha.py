import pytest
import torch
import torch.nn.functional as F
from skimage.color import rgb2lab
from torch import nn

from colorizer import color
from colorizer.models.alpha import AlphaColorizer
from colorizer.models.blocks import count_parameters


def test_alpha_matches_the_reference_architecture():
    model = AlphaColorizer()
    assert count_parameters(model) == 32_202
    convs = [m for m in model.net if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [8, 8, 16, 16, 32, 32, 32, 16, 2]
    assert [c.stride[0] for c in convs] == [2, 1, 1, 2, 1, 2, 1, 1, 1]
    assert all(c.kernel_size == (3, 3) for c in convs)
    assert sum(isinstance(m, nn.Upsample) for m in model.net) == 3
    assert isinstance(model.net[-1], nn.Tanh)
    assert isinstance(model.configure_optimizers(), torch.optim.RMSprop)  # the seed recipe


def test_alpha_is_fully_convolutional_and_bounded():
    model = AlphaColorizer().eval()
    for size in [(32, 32), (64, 96)]:
        ab = model(torch.rand(2, 1, *size) * 2 - 1)
        assert ab.shape == (2, 2, *size)
        assert ab.abs().max() <= 1


def test_training_loss_is_the_mean_squared_error_of_normalised_ab():
    """The plain CNNs' loss: MSE between the predicted and the true ab / 110, from the true
    L / 50 - 1 (scikit-image's Lab here, not colorizer's)."""
    torch.manual_seed(0)
    model = AlphaColorizer()
    batch = torch.randint(0, 256, (3, 3, 16, 24), dtype=torch.uint8)
    lab = torch.from_numpy(rgb2lab(batch.permute(0, 2, 3, 1).numpy())).permute(0, 3, 1, 2)
    l_norm, ab_norm = (lab[:, :1] / 50 - 1).float(), (lab[:, 1:] / 110).float()
    with torch.no_grad():
        expected = (model(l_norm) - ab_norm).pow(2).mean()
        torch.testing.assert_close(model.training_loss(batch), expected, atol=1e-5, rtol=1e-4)


def test_a_hint_taking_plain_cnn_is_trained_on_its_simulated_hints():
    torch.manual_seed(0)
    model = AlphaColorizer(hints=True)
    batch = torch.randint(0, 256, (3, 3, 16, 24), dtype=torch.uint8)
    torch.manual_seed(1)
    loss = model.training_loss(batch)
    torch.manual_seed(1)  # the same simulated hints
    l_norm, ab_norm = color.split_lab(batch)
    with torch.no_grad():
        hinted, unhinted = model(l_norm, model.training_hints(ab_norm)), model(l_norm)
    # Bit for bit: an untrained network's output moves little with its hints.
    assert torch.equal(loss, F.mse_loss(hinted, ab_norm))
    assert not torch.equal(loss, F.mse_loss(unhinted, ab_norm))


class LightnessOnly(AlphaColorizer):
    """A model of another package, written before hints: its forward takes L alone."""

    def forward(self, l_norm: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return self.net(l_norm)


def test_a_model_whose_forward_takes_only_l_still_trains():
    torch.manual_seed(0)
    model = LightnessOnly()
    batch = torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8)
    l_norm, ab_norm = color.split_lab(batch)
    with torch.no_grad():
        assert torch.equal(model.training_loss(batch), F.mse_loss(model(l_norm), ab_norm))


def test_colorize_keeps_size_and_luminance_of_any_input():
    model = AlphaColorizer().eval()
    rgb = torch.rand(2, 3, 37, 53)  # not a multiple of 8: padded, then cropped back
    out = model.colorize(rgb)
    assert out.shape == (2, 3, 37, 53) and out.min() >= 0 and out.max() <= 1
    gray = model.colorize(rgb.mean(1, keepdim=True))
    assert gray.shape == (2, 3, 37, 53)
    # The output's L is the input's L (up to gamut clipping of the predicted chroma).
    l_in, l_out = color.luminance_of(rgb), color.luminance_of(out)
    assert (l_in - l_out).abs().mean() * color.L_SCALE < 1.0


def test_load_model_refuses_what_is_not_a_colorizer_checkpoint(tmp_path):
    import colorizer
    from colorizer.errors import ConfigError

    missing = tmp_path / "missing.ckpt"
    with pytest.raises(ConfigError, match="does not exist"):
        colorizer.load_model(missing)
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(ConfigError, match="not a colorizer checkpoint"):
        colorizer.load_model(foreign)
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="not a readable checkpoint"):
        colorizer.load_model(garbage)
