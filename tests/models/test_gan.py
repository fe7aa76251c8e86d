import csv

import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn

from colorizer.color import split_lab
from colorizer.errors import ConfigError
from colorizer.models.blocks import count_parameters
from colorizer.models.gan import GANColorizer
from colorizer.models.gan_networks import PatchDiscriminator, UnetGenerator
from colorizer.run import train

TINY = ["model=gan", "model.depth=6", "model.base_channels=8", "model.disc_channels=8"]
QUICK = ["data=synthetic", "logger=none", "trainer.accelerator=cpu", "data.batch_size=4"]


def test_parameter_counts_of_the_reference_networks():
    assert count_parameters(UnetGenerator()) == 54_409_858
    assert count_parameters(PatchDiscriminator()) == 2_765_633


def test_unet_shape_dropout_and_patchgan_logits():
    generator = UnetGenerator().eval()
    with torch.no_grad():
        assert generator(torch.zeros(1, 1, 256, 256)).shape == (1, 2, 256, 256)
        assert PatchDiscriminator()(torch.zeros(1, 3, 256, 256)).shape == (1, 1, 30, 30)
    dropouts = [m for m in generator.modules() if isinstance(m, nn.Dropout)]
    assert len(dropouts) == 3 and all(m.p == 0.5 for m in dropouts)
    assert isinstance(generator.model.model[-1], nn.Tanh)


def test_initialisation_and_optimizers():
    model = GANColorizer(depth=6, base_channels=16)
    weights = torch.cat([m.weight.flatten() for m in model.modules() if isinstance(m, nn.Conv2d)])
    assert abs(weights.mean()) < 1e-3 and abs(weights.std() - 0.02) < 1e-3
    opt_g, opt_d = model.configure_optimizers()
    for optimizer, network in ((opt_g, model.generator), (opt_d, model.discriminator)):
        assert isinstance(optimizer, torch.optim.Adam)
        assert optimizer.defaults["lr"] == 2e-4 and optimizer.defaults["betas"] == (0.5, 0.999)
        params = {id(p) for g in optimizer.param_groups for p in g["params"]}
        assert params == {id(p) for p in network.parameters()}


def test_adversarial_training_steps_both_networks(make_cfg, tmp_path):
    cfg = make_cfg(*TINY, *QUICK, "trainer=debug", "trainer.max_steps=6", "logger=csv")
    summary = train(cfg)
    assert summary["global_step"] == 6  # 3 batches x (D step + G step)
    checkpoint = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    assert len(checkpoint["optimizer_states"]) == 2
    assert all(state["state"] for state in checkpoint["optimizer_states"])  # both stepped
    with (tmp_path / "run" / "csv" / "metrics.csv").open() as rows:
        steps = [row for row in csv.DictReader(rows) if row.get("train/g_loss")]
    assert len(steps) == 3
    for row in steps:  # what was logged is what the formulas give (lambda_l1 = 100)
        loss = {key: float(row[f"train/{key}"]) for key in ("d_loss", "g_loss", "l1", "g_adv")}
        assert loss["g_loss"] == pytest.approx(100 * loss["l1"] + loss["g_adv"], rel=1e-5)
        assert 0 < loss["d_loss"] < 2 and loss["g_adv"] > 0


@pytest.mark.parametrize("hints", [False, True])
def test_the_losses_are_the_pix2pix_formulas(hints):
    """D: the mean of BCE(D(real pair), 1) and BCE(D(fake pair), 0); G: BCE(D(fake pair), 1)
    + lambda_l1 x L1(fake ab, true ab), the fake drawn from L (and, for a hint-taking model,
    the simulated hints). Computed here from the networks themselves, with optimizers at
    lr 0 so the step leaves them as they were."""
    torch.manual_seed(0)
    model = GANColorizer(**GANColorizer.small_settings, hints=hints)
    batch = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    frozen = [torch.optim.SGD(net.parameters(), lr=0.0) for net in (model.generator,
              model.discriminator)]  # fmt: skip
    torch.manual_seed(1)
    logged = model.optimization_step(batch, *frozen, backward=torch.Tensor.backward)
    torch.manual_seed(1)  # the same hints, and the generator's dropout the same masks
    l_norm, ab_norm = split_lab(batch)
    with torch.no_grad():
        fake_ab = model(l_norm, model.training_hints(ab_norm))
        real, fake = (model.discriminator(torch.cat([l_norm, ab], dim=1)) for ab in (ab_norm,
                      fake_ab))  # fmt: skip
    bce = F.binary_cross_entropy_with_logits
    l1 = (fake_ab - ab_norm).abs().mean()
    expected = {
        "train/d_loss": (bce(real, torch.ones_like(real)) + bce(fake, torch.zeros_like(fake))) / 2,
        "train/g_adv": bce(fake, torch.ones_like(fake)),
        "train/l1": l1,
        "train/g_loss": bce(fake, torch.ones_like(fake)) + 100 * l1,
    }
    assert set(logged) == set(expected)
    for key, value in expected.items():
        torch.testing.assert_close(logged[key].detach(), value, msg=lambda m, k=key: f"{k}: {m}")


def test_l1_pretraining_leaves_the_discriminator_alone(make_cfg, tmp_path):
    cfg = make_cfg(*TINY, *QUICK, "trainer=debug", "model.pretrain_epochs=100")
    train(cfg)
    checkpoint = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["global_step"] == 4  # one optimizer step per batch while pre-training
    generator_state, discriminator_state = checkpoint["optimizer_states"]
    assert generator_state["state"] and not discriminator_state["state"]


def test_adversarial_phase_starts_with_the_first_batch_of_epoch_pretrain_epochs(make_cfg, tmp_path):
    """8 images, batches of 4: an epoch is 2 batches of the endless stream (Lightning's own
    epoch never ends). With one pre-training epoch, batches 1-2 step G alone, 3-4 both."""
    cfg = make_cfg(*TINY, *QUICK, "trainer=debug", "data.num_train=8", "model.pretrain_epochs=1",
                   "trainer.max_steps=6")  # fmt: skip
    train(cfg)
    checkpoint = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    generator_state, discriminator_state = checkpoint["optimizer_states"]
    assert generator_state["state"][0]["step"] == 4  # 2 + 2 = 6 optimizer steps in 4 batches
    assert discriminator_state["state"][0]["step"] == 2


def test_resnet18_generator_with_encoder_weights_from_a_file(tmp_path):
    torch.manual_seed(3)
    state = timm.create_model("resnet18").state_dict()  # an RGB classifier's weights
    path = tmp_path / "resnet18.pth"
    torch.save(state, path)
    model = GANColorizer(generator="resnet18", encoder_weights=str(path))
    model.on_fit_start()
    assert model.weight_sources == {"model.encoder": str(path)}
    first = model.generator.encoder.conv1.weight
    assert first.shape[1] == 1  # adapted to gray input by summing the RGB filters
    torch.testing.assert_close(first, state["conv1.weight"].sum(dim=1, keepdim=True))
    torch.testing.assert_close(
        model.generator.encoder.layer4[1].conv2.weight, state["layer4.1.conv2.weight"]
    )
    assert model.eval()(torch.zeros(1, 1, 64, 96)).shape == (1, 2, 64, 96)


def test_unknown_generator_is_a_config_error():
    from colorizer.errors import ConfigError

    with pytest.raises(ConfigError, match="model.generator='vgg'"):
        GANColorizer(generator="vgg")


def test_encoder_weights_saved_from_a_wrapped_model_load_through_timm(tmp_path):
    """A checkpoint of a DataParallel/DDP-wrapped network ("module." keys, nested under
    "state_dict") is cleaned by timm's loader; with hints the first convolution takes 4
    channels, adapted from RGB by timm too."""
    torch.manual_seed(4)
    state = timm.create_model("resnet18").state_dict()
    path = tmp_path / "wrapped.pth"
    torch.save({"state_dict": {f"module.{key}": value for key, value in state.items()}}, path)
    model = GANColorizer(generator="resnet18", encoder_weights=str(path), hints=True)
    model.on_fit_start()
    assert model.weight_sources == {"model.encoder": str(path)}
    assert model.generator.encoder.conv1.weight.shape[1] == 4
    torch.testing.assert_close(
        model.generator.encoder.layer4[1].conv2.weight, state["layer4.1.conv2.weight"]
    )
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="wrapped.pth cannot be loaded into model.encoder"):
        GANColorizer(generator="resnet18", encoder_weights=str(path)).on_fit_start()
