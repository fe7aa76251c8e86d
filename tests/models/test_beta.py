import torch
from torch import nn

from colorizer.models.beta import BetaColorizer
from colorizer.models.blocks import count_parameters


def test_beta_matches_the_reference_architecture():
    model = BetaColorizer()
    assert count_parameters(model) == 3_892_194
    convs = [m for m in model.net if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [64, 64, 128, 128, 256, 256, 512, 256, 128, 64, 32, 2]
    assert [c.stride[0] for c in convs].count(2) == 3
    assert isinstance(model.net[-1], nn.Upsample)  # predicts at half size, upsamples last
    optimizer = model.configure_optimizers()
    assert isinstance(optimizer, torch.optim.RMSprop)
    # Keras's RMSprop, as in the seed recipe: PyTorch's defaults diverge here at lr 1e-3
    assert (optimizer.defaults["alpha"], optimizer.defaults["eps"]) == (0.9, 1e-7)


def test_beta_maps_256_input_to_256_ab():
    model = BetaColorizer().eval()
    with torch.no_grad():
        ab = model(torch.zeros(1, 1, 256, 256))
        half = model.net[:-1](torch.zeros(1, 1, 256, 256))
    assert ab.shape == (1, 2, 256, 256)
    assert half.shape == (1, 2, 128, 128)
