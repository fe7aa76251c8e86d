"""Shared fixtures: configs composed from the real conf/ folder, and the real CLI."""

from __future__ import annotations

import importlib
import json
import logging
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict
from PIL import Image

from colorizer.cli import CONFIG_DIR

# Under pytest-xdist (`make test` runs 2 workers), each worker and the processes its tests start
# get their share of the cores: OpenMP threads spinning on more threads than cores slow
# every test down.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    _THREADS = max(1, (os.cpu_count() or 1) // _WORKERS)
    os.environ["OMP_NUM_THREADS"] = str(_THREADS)
    torch.set_num_threads(_THREADS)

# Small, fast settings for end-to-end runs on two CPU cores.
QUICK = ["data=synthetic", "trainer=debug", "logger=none", "trainer.accelerator=cpu"]
# Small but real settings per model, for two CPU cores (the GAN's U-Net at depth 6 works at 64²).
# fullcnn's frozen classifier is timm's 0.47 M-parameter test_resnet, through the same code as
# the default Inception-ResNet-v2 (55.8 M), which tests/models/test_fullcnn.py, test_frozen.py
# and the default run in test_run.py use.
SMALL_MODELS = {
    "alpha": ["model=alpha", "model.optimizer=adam"],
    "beta": ["model=beta", "model.lr=3e-4"],  # the seed recipe's RMSprop (Keras defaults)
    "fullcnn": ["model=fullcnn", "model.backbone=test_resnet", "model.embedding_size=64"],
    "gan": ["model=gan", "model.depth=6", "model.base_channels=16", "model.disc_channels=16"],
}


@pytest.fixture
def make_cfg(tmp_path):
    """Compose ``conf/config.yaml`` with overrides, as ``@hydra.main`` would, into tmp_path/run."""

    def make(*overrides: str, config_name: str = "config") -> DictConfig:
        with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
            cfg = compose(config_name, overrides=list(overrides), return_hydra_config=True)
        with open_dict(cfg):
            cfg.hydra.runtime.output_dir = str(tmp_path / "run")
        HydraConfig.instance().set_config(cfg)
        return cfg

    yield make
    HydraConfig.instance().cfg = None


@pytest.fixture(scope="session")
def checkpoint_of(tmp_path_factory):
    """``checkpoint_of("gan")``: last.ckpt of a small model trained 4 steps by colorizer.run."""
    from colorizer.run import train  # deferred: collection stays light

    made: dict[str, Path] = {}

    def make(name: str) -> Path:
        if name not in made:
            run = tmp_path_factory.mktemp(f"checkpoint-{name}")
            with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
                overrides = [*SMALL_MODELS[name], *QUICK]
                cfg = compose("config", overrides=overrides, return_hydra_config=True)
            with open_dict(cfg):
                cfg.hydra.runtime.output_dir = str(run)
            HydraConfig.instance().set_config(cfg)
            try:
                train(cfg)
            finally:
                HydraConfig.instance().cfg = None
            made[name] = run / "checkpoints" / "last.ckpt"
        return made[name]

    return make


@pytest.fixture
def cli(tmp_path):
    """Run ``python -m <module> args...`` in a fresh process; returns the CompletedProcess."""

    def run(module: str, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        env.pop("HYDRA_FULL_ERROR", None)
        return subprocess.run(
            [sys.executable, "-m", module, *args],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    return run


@pytest.fixture
def main_of(tmp_path, monkeypatch, capsys):
    """``main_of("colorizer.run", args...)``: the entry point's ``main()`` run in this process
    as ``python -m colorizer.run args...`` would run it (same argv, working directory tmp_path,
    Hydra's logging), without a new interpreter's imports; returns a CompletedProcess with the
    exit status and what it printed. The logging and warning settings a run changes are put
    back afterwards. ``cli`` runs the real subprocess where that matters (signals, DDP)."""

    def run(module: str, *args: str) -> subprocess.CompletedProcess:
        monkeypatch.chdir(tmp_path)
        monkeypatch.setattr(sys, "argv", [module, *args])
        monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
        capsys.readouterr()
        saved = _global_output_state()
        status = 0
        try:
            GlobalHydra.instance().clear()
            importlib.import_module(module).main()
        except SystemExit as exit_:
            status = exit_.code if isinstance(exit_.code, int) else int(exit_.code is not None)
        finally:
            GlobalHydra.instance().clear()
            HydraConfig.instance().cfg = None
            _restore_output_state(saved)
        out, err = capsys.readouterr()
        return subprocess.CompletedProcess([module, *args], status, out, err)

    return run


def _global_output_state() -> dict:
    loggers = [logging.getLogger(name) for name in ("", "lightning", "lightning.pytorch",
               "lightning.fabric", "pytorch_lightning")]  # fmt: skip
    return {
        "loggers": [(lg, list(lg.handlers), lg.level, lg.propagate) for lg in loggers],
        "filters": list(warnings.filters),
        "showwarning": warnings.showwarning,
    }


def _restore_output_state(saved: dict) -> None:
    for logger, handlers, level, propagate in saved["loggers"]:
        for handler in logger.handlers:
            if handler not in handlers:
                handler.close()
        logger.handlers[:] = handlers
        logger.setLevel(level)
        logger.propagate = propagate
    for handler in logging.getLogger().handlers:  # filters a run added (console.quiet_libraries)
        handler.filters.clear()
    warnings.filters[:] = saved["filters"]
    warnings.showwarning = saved["showwarning"]


def assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    """A user error: non-zero exit, one ``error:`` line naming the problem, no traceback."""
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]


# A tiny COCO in the official layout, written by the tests (pycocotools reads it for real).
COCO_CATEGORIES = [
    {"id": 1, "name": "person"},
    {"id": 17, "name": "cat"},
    {"id": 18, "name": "dog"},
]
# image id -> category ids shown in it
COCO_TRAIN_LABELS = {1: [18], 2: [17], 3: [17, 18], 4: [1], 5: [1], 6: [1, 18], 9: [17]}
ESCAPING, MISSING, GRAY = 10, 11, 12


def _colour_image(path: Path, seed: int, gray: bool = False) -> None:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)
    if gray:
        pixels[:] = pixels[..., :1]
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, quality=95)


def _write_annotations(path: Path, images: list[dict], labels: dict[int, list[int]]) -> None:
    annotations = [
        {"id": 100 * image + k, "image_id": image, "category_id": category, "bbox": [1, 1, 9, 9],
         "area": 81.0, "iscrowd": 0, "segmentation": [[1, 1, 10, 1, 10, 10]]}
        for image, categories in labels.items()
        for k, category in enumerate(categories)
    ]  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        json.dumps({"images": images, "annotations": annotations, "categories": COCO_CATEGORIES})
    )


@pytest.fixture
def coco_root(tmp_path: Path) -> Path:
    root = tmp_path / "coco"
    images = []
    for image_id in [*COCO_TRAIN_LABELS, GRAY]:
        name = f"{image_id:012d}.jpg"
        _colour_image(root / "train2017" / name, image_id, gray=image_id == GRAY)
        images.append({"id": image_id, "file_name": name, "width": 48, "height": 40})
    # A file_name escaping the image folder, pointing at a real image outside it.
    _colour_image(tmp_path / "escape.jpg", 99)
    images.append({"id": ESCAPING, "file_name": "../../escape.jpg", "width": 48, "height": 40})
    images.append({"id": MISSING, "file_name": "000000000011.jpg", "width": 48, "height": 40})
    labels = {**COCO_TRAIN_LABELS, ESCAPING: [18], MISSING: [18], GRAY: [18]}
    _write_annotations(root / "annotations" / "instances_train2017.json", images, labels)

    val_images = []
    for image_id in (201, 202, 203):
        name = f"{image_id:012d}.jpg"
        _colour_image(root / "val2017" / name, image_id)
        val_images.append({"id": image_id, "file_name": name, "width": 48, "height": 40})
    val_labels = {201: [1], 202: [18], 203: [17]}
    _write_annotations(root / "annotations" / "instances_val2017.json", val_images, val_labels)
    return root
