"""Experiment loggers that need more than a constructor call: W&B with automatic offline mode."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

from lightning.pytorch.loggers import WandbLogger

log = logging.getLogger(__name__)

MODES = ("auto", "online", "offline")


def wandb_credentials() -> tuple[str, str | None]:
    """The W&B server runs would log to (``WANDB_BASE_URL`` or what ``wandb login --host``
    set), and where wandb finds credentials for it: an environment variable, or the netrc
    entry ``wandb login`` wrote for that host (None: none, so offline). Asked of wandb itself,
    so a self-hosted server counts as the public one does."""
    import wandb  # deferred: only logger=wandb needs it
    from wandb.sdk.lib import wbauth

    # The host wandb.init would use, read as wandb.setup reads it (not its cached copy): the
    # settings file `wandb login --host` writes, then WANDB_BASE_URL.
    settings = wandb.Settings()
    folder = Path(os.environ.get("WANDB_CONFIG_DIR") or "~/.config/wandb").expanduser()
    settings.settings_system = str(folder / "settings")
    settings.update_from_system_settings()
    settings.update_from_env_vars(dict(os.environ))
    host = str(settings.base_url).rstrip("/")
    for variable in ("WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE"):
        if os.environ.get(variable):
            return host, variable
    try:
        key = wbauth.read_netrc_auth(host=host)
    except Exception as err:  # noqa: BLE001 - a malformed entry: wandb says so at login
        log.warning("W&B: the netrc entry for %s is unusable (%s)", host, err)
        key = None
    return host, "netrc" if key else None


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
        host, source = wandb_credentials()
        mode = "online" if source else "offline"
        if source:
            log.info("W&B: logging online to %s (credentials from %s)", host, source)
    Path(save_dir).mkdir(parents=True, exist_ok=True)
    if mode == "offline":
        host = wandb_credentials()[0]
        log.warning(
            "W&B: no credentials for %s (WANDB_API_KEY, or `wandb login --host %s`), logging "
            "offline to %s; upload later with: wandb sync %s",
            host,
            host,
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
