import pytest
import timm
import torch
from torch import nn

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
    history = (tmp_path / "run" / "csv" / "metrics.csv").read_text().splitlines()[0]
    for key in ("train/d_loss", "train/g_loss", "train/l1", "train/g_adv"):
        assert key in history


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
