"""Shared fixtures: configs composed from the real conf/ folder, and the real CLI."""

from __future__ import annotations

import importlib
import logging
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from colorizer.cli import CONFIG_DIR
from tests.helpers import QUICK, SMALL_MODELS, train_run, write_tiny_coco

# Under pytest-xdist (`make test` runs 2 workers), each worker and the processes its tests start
# get their share of the cores: OpenMP threads spinning on more threads than cores slow
# every test down.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    _THREADS = max(1, (os.cpu_count() or 1) // _WORKERS)
    os.environ["OMP_NUM_THREADS"] = str(_THREADS)
    torch.set_num_threads(_THREADS)


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

    made: dict[str, Path] = {}

    def make(name: str) -> Path:
        if name not in made:
            run = tmp_path_factory.mktemp(f"checkpoint-{name}")
            train_run(run, [*SMALL_MODELS[name], *QUICK])
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


@pytest.fixture
def coco_root(tmp_path: Path) -> Path:
    """A tiny COCO in the official layout under tmp_path (``tests.helpers.write_tiny_coco``)."""
    return write_tiny_coco(tmp_path)
