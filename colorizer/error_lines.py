"""How an error a user caused reads: one line naming what is wrong and how to fix it.

Errors raised inside a job reach the user wrapped (Hydra wraps whatever a constructor it
called raised): :func:`user_error_behind` finds the user's error in the chain and
:func:`describe` renders it. Out of memory is the user's too: it names the settings that help.
"""

from __future__ import annotations

import re

import torch
from hydra.errors import InstantiationException
from lightning.fabric.utilities.exceptions import MisconfigurationException
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

from colorizer.errors import CheckpointWriteError, ConfigError, DataError

USER_ERRORS = (
    ConfigError,
    DataError,
    FileNotFoundError,
    CheckpointWriteError,
    OmegaConfBaseException,
)


# A DataLoader worker's exception reaches the main process re-raised with the worker's whole
# traceback as its message; what the user needs is its last line, the original message.
_FROM_A_WORKER = re.compile(r"Caught \w+ in DataLoader worker process \d+\.")


def one_line(err: BaseException) -> str:
    """An exception message folded onto one line, without Hydra's search-path listing or a
    DataLoader worker's traceback."""
    message = str(err).split("Config search path:")[0]
    if _FROM_A_WORKER.match(message) and message.strip():
        last = message.strip().splitlines()[-1]  # "colorizer.errors.DataError: what happened"
        message = last.split(": ", 1)[1] if ": " in last else last
    return " ".join(line.strip() for line in message.splitlines() if line.strip())


def user_error_behind(err: BaseException | None) -> BaseException | None:
    """The user error behind ``err``, if any (Hydra wraps errors raised while instantiating).

    A TypeError or ValueError raised by a constructor that Hydra called with config values is
    taken as a wrong value in that config node, which Hydra names as ``full_key``.
    """
    chain: list[BaseException] = []
    while err is not None and all(err is not seen for seen in chain):
        chain.append(err)
        err = err.__cause__ or err.__context__
    for candidate in chain:
        if isinstance(candidate, USER_ERRORS):
            return candidate
    for candidate in chain:
        cause = candidate.__cause__
        # Lightning refuses Trainer arguments with its MisconfigurationException, and one that
        # needs a package not installed here (trainer.accelerator=tpu) with an ImportError.
        if isinstance(candidate, InstantiationException) and isinstance(
            cause, TypeError | ValueError | MisconfigurationException | ImportError
        ):
            key = re.search(r"full_key: (\S+)", str(candidate))
            where = f"under {key.group(1)}" if key else "in the config"
            return ConfigError(f"invalid value {where}: {cause} (HYDRA_FULL_ERROR=1 for details)")
    return None


def describe(err: BaseException) -> str:
    """The one line shown for a user error."""
    if isinstance(err, MissingMandatoryValue) and err.full_key:
        return f"{err.full_key} is required: add {err.full_key}=VALUE to the command"
    return one_line(err)


def is_out_of_memory(err: BaseException) -> bool:
    """CUDA's OutOfMemoryError, or the CPU allocator's RuntimeError."""
    return isinstance(err, torch.OutOfMemoryError | MemoryError) or (
        isinstance(err, RuntimeError) and "can't allocate memory" in str(err)
    )


def out_of_memory_hint(err: BaseException) -> str:
    """The one line for an out-of-memory error: where, and the settings that shrink memory."""
    where = "on the GPU" if isinstance(err, torch.OutOfMemoryError) else "in RAM"
    return (
        f"out of memory {where}: lower data.batch_size or data.image_size "
        "(on a GPU also trainer=gpu: bf16 halves activations)"
    )
