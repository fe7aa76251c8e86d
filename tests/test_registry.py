"""The model and data-source registries: complete for what ships, open to another package."""

import json
import re
import textwrap
from importlib.metadata import entry_points
from pathlib import Path

import pytest
import yaml
from PIL import Image

import colorizer
from colorizer.cli import CONFIG_DIR
from colorizer.errors import ConfigError
from colorizer.models.spec import ModelSpec
from colorizer.registry import DATA_SOURCES, MODELS, Registry
from tests.helpers import QUICK, assert_one_line_error, colourful

README = (CONFIG_DIR.parent / "README.md").read_text()


def _config_target(group: str, name: str) -> str:
    return yaml.safe_load((CONFIG_DIR / group / f"{name}.yaml").read_text())["_target_"]


def _dotted(target: str) -> str:
    return target.replace(":", ".")


def _colon(dotted: str) -> str:
    module, _, name = dotted.rpartition(".")
    return f"{module}:{name}"


@pytest.mark.parametrize("name", MODELS.names())
def test_every_model_has_a_config_test_settings_and_a_readme_row(name):
    assert _config_target("model", name) == _dotted(MODELS.target(name))
    # Its small settings, which the tests train (SMALL_MODELS): keys of its config, and a model.
    cls = MODELS.get(name)
    config = yaml.safe_load((CONFIG_DIR / "model" / f"{name}.yaml").read_text())
    assert set(cls.small_settings) <= set(config) - {"_target_", "_convert_"}, cls.small_settings
    assert isinstance(cls(**cls.small_settings), cls)
    assert re.search(rf"^\| `{name}`( \(default\))? \|", README, re.MULTILINE), "README Models"


@pytest.mark.parametrize("name", DATA_SOURCES.names())
def test_every_data_source_has_a_config_and_a_readme_row(name):
    assert _config_target("data", name) == _dotted(DATA_SOURCES.target(name))
    assert re.search(rf"^\| `{name}`( \(default\))? \|", README, re.MULTILINE), "README Data"


@pytest.mark.parametrize(("group", "registry"), [("model", MODELS), ("data", DATA_SOURCES)])
def test_every_config_names_a_registered_class(group, registry):
    for path in (CONFIG_DIR / group).glob("*.yaml"):
        assert registry.name_of(_colon(_config_target(group, path.stem))) == path.stem


def test_a_name_stands_for_one_class():
    registry = Registry("model", "colorizer.test-only", "builtins:object", {"a": "builtins:int"})
    registry.register("a", int)  # the same again: fine
    with pytest.raises(ConfigError, match="'a' is already registered as builtins:int"):
        registry.register("a", "builtins:str")
    with pytest.raises(ConfigError, match="no model named 'b': registered are a"):
        registry.get("b")


def test_an_unregistered_model_class_is_refused_in_one_line(main_of):
    result = main_of("colorizer.run", "model=alpha", "model._target_=torch.nn.Identity", *QUICK)
    assert_one_line_error(result, "torch.nn.modules.linear.Identity is not a registered model")


# A package of its own, as a user would write one: a model, a data source, their configs,
# and entry points that register both. Nothing of it is imported by colorizer until asked for.
TOY_MODEL = '''
    import torch
    from torch import nn

    from colorizer.models.base import ColorizationModule


    class ToyColorizer(ColorizationModule):
        """Two convolutions: normalised L [B, 1, H, W] -> normalised ab [B, 2, H, W]."""

        def __init__(self, lr: float = 1e-3, width: int = 8) -> None:
            super().__init__(lr=lr)
            self.save_hyperparameters()
            self.net = nn.Sequential(
                nn.Conv2d(1, width, 3, padding=1), nn.ReLU(), nn.Conv2d(width, 2, 3, padding=1)
            )

        def forward(self, l_norm: torch.Tensor) -> torch.Tensor:
            return torch.tanh(self.net(l_norm))
'''
TOY_DATA = '''
    import torch
    from torch.utils.data import Dataset

    from colorizer.data.base import ImageDataModule, split_key


    class Checkerboards(Dataset):
        """Red and blue checkerboards, uint8 [3, S, S]: colour follows the square's brightness."""

        def __init__(self, length: int, size: int) -> None:
            self.length, self.size = length, size

        def __len__(self) -> int:
            return self.length

        def __getitem__(self, key):
            _, index = split_key(key)
            cells = torch.arange(self.size) // (2 + index % 3)
            dark = (cells.view(-1, 1) + cells.view(1, -1)) % 2 == 1
            red = torch.tensor([200, 40, 40], dtype=torch.uint8).view(3, 1, 1)
            blue = torch.tensor([30, 30, 120], dtype=torch.uint8).view(3, 1, 1)
            return torch.where(dark, blue, red)


    class ToyDataModule(ImageDataModule):
        def __init__(self, image_size=32, batch_size=4, num_workers=0, seed=0, images=8):
            super().__init__(image_size, batch_size, num_workers, seed)
            self.save_hyperparameters()
            self.images = images

        def setup(self, stage=None):
            self.train_set, self.val_set, self.test_set = (
                Checkerboards(self.images, self.image_size) for _ in range(3)
            )
'''


def _write_toy_package(root: Path) -> None:
    package = root / "toyplug"
    files = {
        package / "__init__.py": "",
        package / "model.py": TOY_MODEL,
        package / "data.py": TOY_DATA,
        package / "conf" / "__init__.py": "",
        package / "conf" / "model" / "toy.yaml": "_target_: toyplug.model.ToyColorizer\nlr: 1e-3\n",
        package / "conf" / "data" / "toy.yaml": (
            "_target_: toyplug.data.ToyDataModule\nimage_size: 32\nbatch_size: 4\n"
            "num_workers: 0\nseed: ${seed}\n"
        ),
        root / "toyplug-0.1.dist-info" / "METADATA": (
            "Metadata-Version: 2.1\nName: toyplug\nVersion: 0.1\n"
        ),
        root / "toyplug-0.1.dist-info" / "entry_points.txt": (
            "[colorizer.models]\ntoy = toyplug.model:ToyColorizer\n\n"
            "[colorizer.data]\ntoy = toyplug.data:ToyDataModule\n"
        ),
    }  # fmt: skip
    for path, text in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))


def test_a_model_and_a_data_source_of_another_package_train_end_to_end(
    main_of, tmp_path, monkeypatch
):
    plugins = tmp_path / "site"
    _write_toy_package(plugins)
    monkeypatch.syspath_prepend(str(plugins))  # as if pip-installed: the entry points count
    assert "toy" in MODELS.names() and "toy" in DATA_SOURCES.names()

    args = ["model=toy", "data=toy", "hydra.searchpath=[pkg://toyplug.conf]", "logger=none",
            "trainer=debug", "trainer.accelerator=cpu", "hydra.run.dir=run"]  # fmt: skip
    result = main_of("colorizer.run", *args)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert (summary["model"], summary["data"], summary["global_step"]) == ("toy", "toy", 4)

    assert "training toy:" in result.stdout  # its registered name, not its module's file name
    model = colorizer.load_model(summary["best_checkpoint"])
    assert type(model).__qualname__ == "ToyColorizer" and not model.training
    assert model.spec == ModelSpec("toy", size_multiple=1, input_size=None, image_size=32)
    photo = tmp_path / "photo.png"
    Image.fromarray(colourful(40, 52)).save(photo)
    coloured = main_of("colorizer.colorize", f"ckpt_path={summary['best_checkpoint']}",
                       f"input={photo}", "output=out", "hydra.run.dir=colorize")  # fmt: skip
    assert coloured.returncode == 0, coloured.stderr[-3000:]
    done = json.loads((tmp_path / "colorize" / "summary.json").read_text())
    assert (done["model"], done["size"], done["colorized"]) == ("toy", 32, 1)
    evaluated = main_of(
        "colorizer.evaluate", f"ckpt_path={summary['best_checkpoint']}", "data=toy",
        "hydra.searchpath=[pkg://toyplug.conf]", "device=cpu", "hydra.run.dir=evaluation",
    )  # fmt: skip
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    scores = json.loads((tmp_path / "evaluation" / "metrics.json").read_text())
    assert (scores["model"], scores["data"]) == ("toy", "toy")
    assert scores["test/psnr"] == pytest.approx(summary["test/psnr"], rel=1e-5)


def test_the_installed_commands_are_the_entry_points():
    scripts = {ep.name: ep.value for ep in entry_points(group="console_scripts")}
    for command, module in [("train", "run"), ("evaluate", "evaluate"), ("colorize", "colorize"),
                            ("export", "export"), ("bench", "bench"),
                            ("serve", "serve")]:  # fmt: skip
        assert scripts[f"colorizer-{command}"] == f"colorizer.{module}:main"
