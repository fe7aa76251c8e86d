"""Shared fixtures: configs composed from the real conf/ folder, and the real CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from colorizer.cli import CONFIG_DIR

# Small, fast settings for end-to-end runs on two CPU cores.
QUICK = ["data=synthetic", "trainer=debug", "logger=none", "trainer.accelerator=cpu"]


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


def assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    """A user error: non-zero exit, one ``error:`` line naming the problem, no traceback."""
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]


def run_dir_of(tmp_path: Path) -> Path:
    return tmp_path / "run"
