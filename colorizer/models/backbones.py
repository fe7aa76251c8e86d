"""Pretrained timm networks, loaded from local files only unless the user asks for a download.

Where weights come from, in order:

1. an explicit file (``model.backbone_weights=PATH``: ``.safetensors``, or a ``.pth``/``.pt``
   state dict, possibly nested under ``state_dict`` or ``model``, ``module.`` prefixes of a
   wrapped network removed);
2. the user's Hugging Face cache (where ``timm`` itself stores what it downloads), looked up
   without any network access;
3. a download through timm, only with ``model.backbone_download=true``;
4. otherwise random initialisation, with one loud :class:`PretrainedWeightsMissing` warning.

Weights are loaded by timm itself (``pretrained_cfg_overlay=dict(file=...)``): each model's
own key filter, the first convolution adapted to the input channels (``in_chans``: RGB filters
summed for gray, repeated for more), a classifier the network does not have dropped.
"""

from __future__ import annotations

import functools
import logging
import warnings
from pathlib import Path

import timm
import torch
from torch import nn

from colorizer.errors import ConfigError

log = logging.getLogger(__name__)

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


class PretrainedWeightsMissing(UserWarning):
    """No pretrained weights were found locally, so a network starts from random weights."""


def create_timm(name: str, **kwargs) -> nn.Module:
    """A timm model, randomly initialised from a fixed seed (the same weights in every build,
    so a frozen random network need not be stored: ``colorizer.models.frozen``), with a
    one-line error for an unknown name. The global random generators are left untouched."""
    if name not in timm.list_models(name):
        raise ConfigError(f"unknown timm model {name!r}: see timm.list_models() for the names")
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(0)  # the CPU's, where timm initialises
        model = timm.create_model(name, pretrained=False, **kwargs)
    model.timm_build = (name, dict(kwargs))  # how to build it again, with weights
    return model


def cached_weights(model: nn.Module) -> Path | None:
    """The model's pretrained weights in the local Hugging Face cache, if present (no network)."""
    from huggingface_hub import try_to_load_from_cache

    repo_id = (getattr(model, "pretrained_cfg", None) or {}).get("hf_hub_id")
    if not repo_id:
        return None
    for filename in WEIGHT_FILES:
        found = try_to_load_from_cache(repo_id, filename)
        if isinstance(found, str) and Path(found).is_file():
            return Path(found)
    return None


def load_weights_file(model: nn.Module, path: Path, what: str) -> None:
    """Load a weights file into a network made by :func:`create_timm`, through timm: the
    same network is built with ``pretrained_cfg_overlay=dict(file=path)`` and its weights
    copied. A file that is not one, or not this network's, is a one-line ConfigError."""
    _load_through_timm(model, {"file": str(path), "source": ""}, f"{path}", what)


def _load_through_timm(model: nn.Module, overlay: dict | None, source: str, what: str) -> None:
    name, kwargs = model.timm_build
    timm_log = logging.getLogger("timm")  # a line per step of the load: ours says it in one
    level = timm_log.level
    timm_log.setLevel(logging.ERROR)
    try:
        with torch.random.fork_rng(devices=[]):  # its initialisation, overwritten: no draws
            pretrained = timm.create_model(
                name, pretrained=True, pretrained_cfg_overlay=overlay, **kwargs
            )
        model.load_state_dict(pretrained.state_dict())
    except (RuntimeError, ValueError, KeyError, OSError) as err:
        first_line = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise ConfigError(f"{source} cannot be loaded into {what} ({first_line})") from err
    finally:
        timm_log.setLevel(level)
    log.info("%s: pretrained weights from %s", what, source)


def load_pretrained(model: nn.Module, *, weights: str | None, download: bool, what: str) -> str:
    """Fill ``model`` with pretrained weights; returns where they came from ("random" if none).

    ``what`` names the config keys in messages, e.g. "model.backbone".
    """
    if weights:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise ConfigError(f"{what}_weights={weights} does not exist: give a weights file")
        load_weights_file(model, path, what)
        return str(path)
    cached = cached_weights(model)
    if cached is not None:
        load_weights_file(model, cached, what)
        return str(cached)
    name = model.pretrained_cfg.get("architecture", type(model).__name__)
    if download:  # the user asked: network allowed
        _load_through_timm(model, None, f"download of {name}", what)
        cached = cached_weights(model)  # where timm put the download, if in the HF cache
        return str(cached) if cached is not None else f"download of {name}"
    warnings.warn(
        f"No pretrained weights for {name}: not in {what}_weights, nor in the Hugging Face "
        f"cache ({model.pretrained_cfg.get('hf_hub_id')}). It starts from RANDOM weights, so "
        f"its features carry no meaning. Pass {what}_weights=PATH, or {what}_download=true "
        "to fetch them.",
        PretrainedWeightsMissing,
        stacklevel=2,
    )
    return "random"


@functools.cache
def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bfloat16 natively (emulated bf16 is slower than float32):
    GPUs from Ampere on, CPUs with AVX512-BF16 or AMX."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type == "cpu":
        return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    return False


def freeze(module: nn.Module) -> nn.Module:
    """No gradients and eval mode (the caller keeps it in eval mode across ``train()``)."""
    for parameter in module.parameters():
        parameter.requires_grad_(False)
    return module.eval()
