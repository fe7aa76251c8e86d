"""Pretrained timm networks, loaded from local files only unless the user asks for a download.

Where weights come from, in order:

1. an explicit file (``model.backbone_weights=PATH``: ``.safetensors``, or a ``.pth``/``.pt``
   state dict, possibly nested under ``state_dict`` or ``model``);
2. the user's Hugging Face cache (where ``timm`` itself stores what it downloads), looked up
   without any network access;
3. a download through timm, only with ``model.backbone_download=true``;
4. otherwise random initialisation, with one loud :class:`PretrainedWeightsMissing` warning.
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
        return timm.create_model(name, pretrained=False, **kwargs)


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


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a weights file; ``weights_only`` so that a file cannot run code."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise ConfigError(f"{path} holds no state dict of tensors")
    return state


def load_into(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load a state dict, adapting an RGB first convolution to a 1-channel one by summing."""
    own = model.state_dict()
    for key, value in list(state.items()):
        target = own.get(key)
        if target is not None and value.dim() == 4 and value.shape[1] == 3 and target.shape[1] == 1:
            state[key] = value.sum(dim=1, keepdim=True)  # gray = R = G = B: the filters add up
    missing, unexpected = model.load_state_dict(state, strict=False)
    # A classifier head the model does not have (features_only) is expected to be left over.
    if missing:
        raise ConfigError(f"{source} does not fit this network: {len(missing)} missing tensors")
    if unexpected:
        log.info("%s: ignored %d tensors this network has no use for", source, len(unexpected))


def load_pretrained(model: nn.Module, *, weights: str | None, download: bool, what: str) -> str:
    """Fill ``model`` with pretrained weights; returns where they came from ("random" if none).

    ``what`` names the config keys in messages, e.g. "model.backbone".
    """
    if weights:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise ConfigError(f"{what}_weights={weights} does not exist: give a weights file")
        load_into(model, read_state_dict(path), str(path))
        return str(path)
    cached = cached_weights(model)
    if cached is not None:
        load_into(model, read_state_dict(cached), str(cached))
        return str(cached)
    name = model.pretrained_cfg.get("architecture", type(model).__name__)
    if download:
        pretrained = timm.create_model(name, pretrained=True)  # the user asked: network allowed
        load_into(model, pretrained.state_dict(), f"download of {name}")
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
