"""Frozen networks are referenced by checkpoints, not copied into each, and come back exactly."""

import os
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

from colorizer.errors import ConfigError
from colorizer.models import load_model
from colorizer.models.blocks import count_parameters
from colorizer.run import train
from tests.helpers import QUICK, SMALL_MODELS, assert_one_line_error

TINY = SMALL_MODELS["fullcnn"]  # a small timm classifier: the mechanism does not depend on which


def state_dict_of(path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.fixture
def weights_file(tmp_path):
    """Recognisable classifier weights (not timm's initialisation) in a safetensors file."""
    torch.manual_seed(11)
    state = timm.create_model("test_resnet", num_classes=1000).state_dict()
    path = tmp_path / "classifier.safetensors"
    save_file(state, str(path))
    return path, state


@pytest.mark.slow
def test_checkpoints_reference_the_frozen_classifier_and_load_it_back(
    make_cfg, tmp_path, weights_file
):
    path, state = weights_file
    summary = train(make_cfg(*TINY, *QUICK, f"model.backbone_weights={path}"))
    checkpoints = tmp_path / "run" / "checkpoints"
    best, last = summary["best_checkpoint"], checkpoints / "last.ckpt"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["best-step4.ckpt", "last.ckpt"]
    for saved in (best, last):
        checkpoint = state_dict_of(saved)
        assert not [key for key in checkpoint["state_dict"] if key.startswith("backbone.")]
        record = checkpoint["frozen_weights"]["model.backbone"]
        assert record["source"] == str(path.resolve()) and len(record["sha256"]) == 64
    assert "optimizer_states" in state_dict_of(last)  # last: everything to resume from
    # The best is the final state here: one file under two names, not two copies.
    assert os.path.samefile(best, last)

    model = load_model(best)
    for name, tensor in model.backbone.state_dict().items():
        torch.testing.assert_close(tensor, state[name], msg=name)
    assert model.weight_sources == {"model.backbone": str(path.resolve())}

    # Resuming restores it too, and the continued run references the same file.
    resumed = train(make_cfg(*TINY, *QUICK, "trainer.max_steps=6", "ckpt_path=last"))
    assert resumed["global_step"] == 6
    record = state_dict_of(last)["frozen_weights"]["model.backbone"]
    assert record["source"] == str(path.resolve())
    assert state_dict_of(best)["global_step"] == 4  # last.ckpt was replaced, not overwritten


def test_a_missing_or_changed_weights_file_is_named_in_one_line(
    make_cfg, main_of, tmp_path, weights_file
):
    path, state = weights_file
    summary = train(make_cfg(*TINY, *QUICK, f"model.backbone_weights={path}"))
    best = summary["best_checkpoint"]
    path.rename(tmp_path / "moved.safetensors")
    with pytest.raises(ConfigError, match=f"read from {path.resolve()}, which is missing"):
        load_model(best)
    result = main_of("colorizer.evaluate", f"ckpt_path={best}", "data=synthetic", "device=cpu")
    assert_one_line_error(result, "put that weights file back")

    save_file({name: tensor + 1 for name, tensor in state.items()}, str(path))
    with pytest.raises(ConfigError, match="no longer holds the weights"):
        load_model(best)


def test_a_random_classifier_is_rebuilt_from_its_seed(make_cfg, tmp_path):
    summary = train(make_cfg(*TINY, *QUICK))
    checkpoint = state_dict_of(summary["best_checkpoint"])
    assert checkpoint["frozen_weights"]["model.backbone"]["source"] == "random"
    model = load_model(summary["best_checkpoint"])
    assert model.weight_sources == {"model.backbone": "random"}

    # A checkpoint written before frozen parts were referenced (the tensors inside) still
    # loads, and says so.
    torch.manual_seed(5)
    stored = timm.create_model("test_resnet", num_classes=1000).state_dict()
    del checkpoint["frozen_weights"]
    checkpoint["state_dict"].update({f"backbone.{k}": v for k, v in stored.items()})
    old = tmp_path / "old.ckpt"
    torch.save(checkpoint, old)
    model = load_model(old)
    assert model.weight_sources == {"model.backbone": "checkpoint"}
    torch.testing.assert_close(model.backbone.conv1[0].weight, stored["conv1.0.weight"])


@pytest.mark.slow
def test_the_default_model_writes_small_checkpoints(make_cfg, tmp_path):
    """fullcnn with its 55.8 M-parameter classifier: checkpoints hold the 6.5 M trained ones,
    the best as weights only (it is not the final state here: validated at steps 2 and 4)."""
    summary = train(make_cfg("model=fullcnn", "model.embedding_size=75", *QUICK, "model.lr=1"))
    trainable_bytes = 4 * 6_541_202
    assert count_parameters(load_model(summary["best_checkpoint"])) == 6_541_202
    best, last = Path(summary["best_checkpoint"]), tmp_path / "run" / "checkpoints" / "last.ckpt"
    assert best.name == "best-step2.ckpt"  # lr 1 wrecks the model after step 2
    assert trainable_bytes < best.stat().st_size < trainable_bytes * 1.01
    assert "optimizer_states" not in state_dict_of(best)
    # last: the weights and Adam's two moments of each
    assert 3 * trainable_bytes < last.stat().st_size < 3 * trainable_bytes * 1.01
