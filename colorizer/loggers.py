"""Experiment loggers that need more than a constructor call: W&B with automatic offline mode."""

from __future__ import annotations

import logging
import netrc
import os
from collections.abc import Sequence
from pathlib import Path

from lightning.pytorch.loggers import WandbLogger

log = logging.getLogger(__name__)

WANDB_HOST = "api.wandb.ai"
MODES = ("auto", "online", "offline")


def wandb_credentials() -> bool:
    """Whether W&B can authenticate here: WANDB_API_KEY, or what ``wandb login`` wrote."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators(WANDB_HOST) is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        return False


def wandb_logger(
    save_dir: str,
    project: str = "colorizer",
    entity: str | None = None,
    name: str | None = None,
    group: str | None = None,
    tags: Sequence[str] = (),
    mode: str = "auto",
    log_model: bool = False,
) -> WandbLogger:
    """A W&B logger whose files live in ``save_dir/wandb`` (the run directory).

    ``mode=auto`` logs online when credentials are configured and offline otherwise, saying
    so in one line with the command that uploads the run later.
    """
    if mode not in MODES:
        from colorizer.errors import ConfigError

        raise ConfigError(f"logger.wandb.mode={mode!r} is not one of: {', '.join(MODES)}")
    if mode == "auto":
        mode = "online" if wandb_credentials() else "offline"
    Path(save_dir).mkdir(parents=True, exist_ok=True)
    if mode == "offline":
        log.warning(
            "W&B: no credentials (WANDB_API_KEY or `wandb login`), logging offline to %s; "
            "upload later with: wandb sync %s",
            Path(save_dir) / "wandb",
            Path(save_dir) / "wandb" / "offline-run-*",
        )
    return WandbLogger(
        save_dir=save_dir,
        project=project,
        entity=entity,
        name=name,
        group=group,
        tags=list(tags),
        offline=mode == "offline",
        log_model=log_model,
    )
