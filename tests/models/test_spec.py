"""A model's spec (name, geometry, training size): held by the module, saved with it, read
by every application."""

import json

import numpy as np
import onnx
import pytest
import torch
from PIL import Image

import colorizer
from colorizer.errors import ConfigError
from colorizer.inference import TorchNetwork
from colorizer.models.alpha import AlphaColorizer
from colorizer.models.spec import ModelSpec
from colorizer.registry import MODELS
from tests.helpers import assert_one_line_error

TRAINED_AT = 64  # the synthetic data's image_size, which checkpoint_of trains at


@pytest.mark.parametrize("name", MODELS.names())
def test_every_checkpoint_carries_the_spec_it_was_trained_with(checkpoint_of, name):
    path = checkpoint_of(name)
    saved = torch.load(path, map_location="cpu", weights_only=True)["colorizer_spec"]
    model = colorizer.load_model(path)
    cls = MODELS.get(name)
    fresh = cls(**cls.small_settings)
    expected = ModelSpec(name, fresh.size_multiple, fresh.input_size, TRAINED_AT)
    assert ModelSpec.from_dict(saved) == expected
    assert model.spec == expected


def test_a_checkpoint_from_before_the_spec_takes_its_data_size(checkpoint_of, tmp_path):
    checkpoint = torch.load(checkpoint_of("alpha"), map_location="cpu", weights_only=True)
    del checkpoint["colorizer_spec"]
    checkpoint["datamodule_hyper_parameters"]["image_size"] = 48
    old = tmp_path / "old.ckpt"
    torch.save(checkpoint, old)
    assert colorizer.load_model(old).spec == ModelSpec("alpha", 8, None, 48)


def test_the_name_is_the_registered_one_not_the_file_name():
    class Renamed(AlphaColorizer):
        pass

    MODELS.register("renamed", Renamed)
    try:
        model = Renamed()
        assert model.spec.name == "renamed"
        assert TorchNetwork(model, torch.device("cpu")).name == "renamed"
    finally:
        MODELS._registered.pop("renamed")


@pytest.mark.parametrize(
    ("spec", "requested", "expected"),
    [
        (ModelSpec("alpha", 8, None, 96), None, 96),  # the size it was trained at
        (ModelSpec("alpha", 8, None, 96), 200, 200),  # asked for
        (ModelSpec("gan", 1, 256, 256), None, 256),
        (ModelSpec("gan", 1, 32, 64), None, 64),  # trained at a multiple of its own size
        (ModelSpec("alpha", 8, None, None), 128, 128),
    ],
)
def test_working_size_is_the_models_own_unless_asked(spec, requested, expected):
    assert spec.working_size(requested) == expected


def test_an_untrained_fully_convolutional_model_needs_a_size():
    with pytest.raises(ConfigError, match="does not record the size it was trained at: set size=N"):
        ModelSpec("alpha", 8).working_size(None)
    with pytest.raises(ConfigError, match=r"size=0 must be an integer >= 1, or null"):
        ModelSpec("alpha", 8, None, 64).working_size(0)


def test_applications_default_to_the_training_size(main_of, checkpoint_of, tmp_path):
    """colorize, export and evaluate with no size: the checkpoint's (64), not a default of
    their own; size= still overrides."""
    path = checkpoint_of("alpha")
    photos = tmp_path / "photos"
    photos.mkdir()
    pixels = np.random.default_rng(0).integers(0, 256, (40, 52, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(photos / "a.png")

    result = main_of("colorizer.colorize", f"ckpt_path={path}", f"input={photos}",
                     "output=out", "num_workers=0", "hydra.run.dir=colorize")  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads((tmp_path / "colorize" / "summary.json").read_text())["size"] == TRAINED_AT

    result = main_of("colorizer.export", f"ckpt_path={path}", "output=alpha.onnx",
                     "hydra.run.dir=export")  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    metadata = {p.key: p.value for p in onnx.load(str(tmp_path / "alpha.onnx")).metadata_props}
    assert metadata["colorizer.model"] == "alpha"
    assert metadata["colorizer.image_size"] == str(TRAINED_AT)

    for size, expected in ((None, TRAINED_AT), (32, 32)):
        result = main_of("colorizer.evaluate", f"ckpt_path={path}", "data=synthetic",
                         "data.num_test=4", "device=cpu", f"hydra.run.dir=evaluate{size}",
                         *([f"size={size}"] if size else []))  # fmt: skip
        assert result.returncode == 0, result.stderr[-2000:]
        scores = json.loads((tmp_path / f"evaluate{size}" / "metrics.json").read_text())
        assert scores["image_size"] == expected


@pytest.mark.parametrize("old", ["video_size=64", "data.image_size=64"])
def test_evaluates_old_size_keys_are_refused_with_the_new_one(main_of, old):
    result = main_of("colorizer.evaluate", "ckpt_path=any.ckpt", old)
    assert_one_line_error(result, f"{old.split('=')[0]}= is written size= here: use size=64")
