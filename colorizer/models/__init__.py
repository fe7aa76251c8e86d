"""The colorization architectures, one module each; ``base`` holds what they share."""

from __future__ import annotations

from pathlib import Path

import torch

from colorizer.errors import ConfigError
from colorizer.models.base import ColorizationModule
from colorizer.registry import MODELS

__all__ = ["ColorizationModule", "load_model", "read_checkpoint"]


def read_checkpoint(path: str | Path, mmap: bool = False) -> dict:
    """A checkpoint's contents, loaded with ``weights_only=True`` (a file cannot make this run
    code); a ConfigError in one line when it is not a readable checkpoint (truncated, not one,
    or holding objects ``weights_only`` refuses)."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as err:  # unpickling errors have many types; all mean "not loadable"
        raise ConfigError(f"{path} is not a readable checkpoint ({type(err).__name__})") from err
    if not isinstance(checkpoint, dict):
        raise ConfigError(f"{path} is not a readable checkpoint (it holds no dictionary)")
    return checkpoint


def load_model(path: str | Path, map_location: str | torch.device = "cpu") -> ColorizationModule:
    """Any trained colorizer from its Lightning checkpoint, in eval mode, with no Hydra involved.

    The checkpoint names its class (``colorizer_model``); only classes registered in
    ``colorizer.registry.MODELS`` are accepted, and tensors are loaded with
    ``weights_only=True``, so a checkpoint cannot make this import or run arbitrary code.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"checkpoint {path} does not exist: pass the path of a .ckpt file")
    target = read_checkpoint(path).get("colorizer_model")
    if target is None:
        raise ConfigError(f"{path} is not a colorizer checkpoint (it names no colorizer model)")
    name = MODELS.name_of(str(target))
    if name is None:
        raise ConfigError(f"{path} names {target}, which is not a registered colorizer model")
    model_class = MODELS.get(name)
    model = model_class.load_from_checkpoint(path, map_location=map_location, weights_only=True)
    return model.eval()
