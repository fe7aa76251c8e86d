"""Frozen networks in checkpoints: referenced by where their weights come from, not copied.

A frozen part (pretrained, no trainable parameter: fullcnn's 224 MB classifier) never changes
during training, so a copy in every checkpoint only fills the disk. A checkpoint records
instead, under ``frozen_weights``, each frozen part's source and a SHA-256 of its tensors:

- a weights file (``model.backbone_weights=PATH``, or the Hugging Face cache file that timm
  reads or downloads into), loaded again from that path;
- ``random`` (no pretrained weights were found), which any later build repeats, since the
  part is initialised from a fixed seed (``backbones.create_timm``).

Loading rebuilds the part from its source and refuses, in one line, weights whose
fingerprint differs. A part whose source cannot be found again (a checkpoint from before
this scheme, loaded and saved anew) is stored in full, as it always was.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

from colorizer.errors import ConfigError

RANDOM = "random"
KEY = "frozen_weights"


def fingerprint(module: nn.Module) -> str:
    """SHA-256 of a module's tensors (names, dtypes and bytes), whatever their memory layout
    or device."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        data = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}:{data.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(data.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def findable(source: str) -> bool:
    """Whether weights from ``source`` can be rebuilt at load time."""
    return source == RANDOM or Path(source).is_file()


def strip(
    checkpoint: dict[str, Any], parts: dict[str, tuple[str, nn.Module, str]], digests: dict
) -> None:
    """Replace the tensors of each findable frozen part by a reference to their source.

    ``parts``: config prefix (``model.backbone``) -> (state-dict prefix, module, source);
    ``digests`` caches each part's fingerprint by (prefix, source): frozen weights are only
    hashed again after they were reloaded.
    """
    records = {}
    for what, (prefix, module, source) in parts.items():
        if not findable(source):
            continue
        source = source if source == RANDOM else str(Path(source).resolve())
        if (what, source) not in digests:
            digests[(what, source)] = fingerprint(module)
        state = checkpoint["state_dict"]
        for key in [key for key in state if key.startswith(f"{prefix}.")]:
            del state[key]
        records[what] = {
            "prefix": prefix, "source": source, "sha256": digests[(what, source)],
            "timm": timm.__version__,
        }  # fmt: skip
    if records:
        checkpoint[KEY] = records


def restore(
    checkpoint: dict[str, Any],
    modules: dict[str, nn.Module],
    load_file: Callable[[nn.Module, Path, str], None],
) -> dict[str, str]:
    """Put each referenced frozen part back: from its file, or as built (``random``), after
    checking its fingerprint; its tensors go into ``checkpoint["state_dict"]``.

    ``modules``: config prefix -> the part in the model being loaded. Returns the sources of
    the parts restored by reference.
    """
    sources = {}
    for what, record in checkpoint.get(KEY, {}).items():
        module = modules.get(what)
        if module is None:
            raise ConfigError(f"the checkpoint references a frozen {what} this model does not have")
        source, expected = record["source"], record["sha256"]
        if fingerprint(module) != expected:
            if source == RANDOM:
                raise ConfigError(
                    f"the checkpoint's frozen {what} was randomly initialised by timm "
                    f"{record['timm']}, and timm {timm.__version__} initialises it otherwise: "
                    f"install timm=={record['timm']} to load it"
                )
            if not Path(source).is_file():
                raise ConfigError(
                    f"the checkpoint's frozen {what} is not stored in it but read from "
                    f"{source}, which is missing: put that weights file back (sha256 "
                    f"{expected[:12]}...)"
                )
            load_file(module, Path(source), what)
            if fingerprint(module) != expected:
                raise ConfigError(
                    f"{source} no longer holds the weights the checkpoint's frozen {what} was "
                    f"trained with (sha256 {expected[:12]}...): restore the original file"
                )
        state = module.state_dict()
        checkpoint["state_dict"].update({f"{record['prefix']}.{k}": v for k, v in state.items()})
        sources[what] = source
    return sources
