import subprocess
import sys
import textwrap
import warnings

import huggingface_hub.constants
import pytest
import timm
import torch
from safetensors.torch import save_file

from colorizer.color import normalize_l
from colorizer.errors import ConfigError
from colorizer.models.backbones import PretrainedWeightsMissing
from colorizer.models.blocks import count_parameters
from colorizer.models.fullcnn import FullCNNColorizer


@pytest.fixture(scope="module")
def model():
    return FullCNNColorizer()


@pytest.fixture(scope="module")
def weights_state():
    """A recognisable Inception-ResNet-v2 state dict (seeded random weights)."""
    torch.manual_seed(7)
    return timm.create_model("inception_resnet_v2", num_classes=1000).state_dict()


def test_parameter_counts_and_frozen_backbone(model):
    assert count_parameters(model.encoder) == 5_827_200
    assert count_parameters(model.fusion) == 321_792
    assert count_parameters(model.decoder) == 392_210
    assert count_parameters(model) == 6_541_202
    assert count_parameters(model.backbone, trainable_only=False) == 55_843_464
    assert not any(p.requires_grad for p in model.backbone.parameters())
    optimizer = model.configure_optimizers()
    assert sum(p.numel() for g in optimizer.param_groups for p in g["params"]) == 6_541_202
    model.train()
    assert model.encoder.training and not model.backbone.training


def test_encoder_output_and_fusion_shapes(model):
    l_norm = torch.zeros(2, 1, 256, 256)
    with torch.no_grad():
        assert model.encoder(l_norm).shape == (2, 256, 32, 32)
        assert model.embed(l_norm).shape == (2, 1000)
        assert model.eval()(l_norm).shape == (2, 2, 256, 256)


def test_backbone_sees_the_gray_image_normalised_as_its_weights_expect(model):
    # Inception weights expect [-1, 1]: black -> -1, white -> +1, at 299².
    lightness = torch.tensor([0.0, 100.0]).view(2, 1, 1, 1).expand(2, 1, 64, 64)
    seen = model.backbone_input(normalize_l(lightness))
    assert seen.shape == (2, 3, 299, 299)
    torch.testing.assert_close(seen[0], torch.full_like(seen[0], -1.0), atol=1e-3, rtol=0)
    torch.testing.assert_close(seen[1], torch.full_like(seen[1], 1.0), atol=1e-3, rtol=0)
    assert model.backbone.pretrained_cfg["mean"] == (0.5, 0.5, 0.5)


def test_embedding_is_computed_without_gradients(model):
    l_norm = torch.rand(1, 1, 64, 64, requires_grad=True)
    embedding = model.embed(l_norm)
    assert not embedding.requires_grad
    torch.testing.assert_close(embedding.sum(), torch.tensor(1.0))  # class probabilities


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_backbone_weights_from_a_local_file(tmp_path, weights_state, suffix):
    path = tmp_path / f"irv2{suffix}"
    if suffix == ".safetensors":
        save_file(weights_state, str(path))
    else:
        torch.save({"state_dict": weights_state}, path)
    model = FullCNNColorizer(backbone_weights=str(path))
    model.on_fit_start()
    assert model.weight_sources == {"model.backbone": str(path)}
    for name, tensor in model.backbone.state_dict().items():
        torch.testing.assert_close(tensor, weights_state[name], msg=name)


def test_missing_weights_file_is_a_config_error():
    model = FullCNNColorizer(backbone_weights="/nonexistent/irv2.pth")
    with pytest.raises(ConfigError, match="model.backbone_weights=/nonexistent/irv2.pth"):
        model.on_fit_start()


def test_no_weights_anywhere_warns_once_and_stays_random(tmp_path, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    model = FullCNNColorizer()
    with pytest.warns(PretrainedWeightsMissing, match="RANDOM") as caught:
        model.on_fit_start()
    assert len(caught) == 1
    assert model.weight_sources == {"model.backbone": "random"}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.on_fit_start()  # looked up once per model, not again at every fit


@pytest.mark.slow
def test_backbone_weights_from_the_hugging_face_cache(tmp_path, weights_state):
    # The layout huggingface_hub writes: models--ORG--NAME/{refs/main, snapshots/REV/FILE}.
    repo = tmp_path / "models--timm--inception_resnet_v2.tf_in1k"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)
    snapshot = repo / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    save_file(weights_state, str(snapshot / "model.safetensors"))
    script = textwrap.dedent(
        """
        import warnings
        warnings.simplefilter("error")  # no "missing weights" warning may be raised
        from colorizer.models.fullcnn import FullCNNColorizer
        model = FullCNNColorizer()
        model.on_fit_start()
        print(model.weight_sources["model.backbone"])
        """
    )
    env = {"HF_HUB_CACHE": str(tmp_path), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == str(snapshot / "model.safetensors")


def test_embedding_is_the_softmax_or_the_scores_before_it(model):
    l_norm = torch.rand(2, 1, 64, 64) * 2 - 1
    logits_model = FullCNNColorizer(embedding="logits", embedding_size=75)
    logits_model.backbone.load_state_dict(model.backbone.state_dict())
    logits_model.embedding_size = model.embedding_size = 75
    try:
        probabilities, scores = model.embed(l_norm), logits_model.embed(l_norm)
    finally:
        model.embedding_size = 299
    torch.testing.assert_close(probabilities.sum(dim=1), torch.ones(2))
    torch.testing.assert_close(scores.softmax(dim=1), probabilities)
    assert count_parameters(logits_model) == 6_541_202
    with pytest.raises(ConfigError, match="model.embedding='probs' is not one of: softmax, logits"):
        FullCNNColorizer(embedding="probs")
