"""What every Hydra entry point shares: the config folder and one-line errors.

Every mistake a user can make ends in a single ``error: ...`` line on stderr and exit status 2,
never a traceback: bad overrides are caught by composing the config once before Hydra runs,
and errors raised inside the job (a missing folder, a bad value) by ``run_app``'s guard.
``HYDRA_FULL_ERROR=1`` shows the full traceback for debugging, as in Hydra itself.
"""

from __future__ import annotations

import functools
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hydra
import torch
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException, InstantiationException
from omegaconf import DictConfig
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException
from rich import progress
from rich.console import Console
from rich.text import Text

from colorizer.errors import ConfigError, TrainingDiverged

CONFIG_DIR = Path(__file__).resolve().parent.parent / "conf"
USAGE_ERROR = 2


def _user_errors() -> tuple[type[BaseException], ...]:
    from datamodules import DataError  # deferred: the data package is only needed by the job

    return (ConfigError, DataError, FileNotFoundError, OmegaConfBaseException)


def config_choice(group: str, fallback: str) -> str:
    """The config-group choice (``model=alpha`` -> "alpha") the running job was composed with."""
    if HydraConfig.initialized():
        return str(HydraConfig.get().runtime.choices.get(group, fallback))
    return fallback


def one_line(err: BaseException) -> str:
    """An exception message folded onto one line, without Hydra's search-path listing."""
    message = str(err).split("Config search path:")[0]
    return " ".join(line.strip() for line in message.splitlines() if line.strip())


def _root_user_error(err: BaseException | None) -> BaseException | None:
    """The user error behind ``err``, if any (Hydra wraps errors raised while instantiating).

    A TypeError or ValueError raised by a constructor that Hydra called with config values is
    taken as a wrong value in that config node, which Hydra names as ``full_key``.
    """
    chain: list[BaseException] = []
    while err is not None and all(err is not seen for seen in chain):
        chain.append(err)
        err = err.__cause__ or err.__context__
    for candidate in chain:
        if isinstance(candidate, _user_errors()):
            return candidate
    for candidate in chain:
        cause = candidate.__cause__
        if isinstance(candidate, InstantiationException) and isinstance(
            cause, TypeError | ValueError
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


def fail(message: str) -> None:
    """Print one error line and exit with the usage-error status."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(USAGE_ERROR)


def check_overrides(argv: list[str], config_name: str) -> None:
    """Compose the config once with the user's overrides so a bad one fails in one line.

    Skipped for Hydra's own flags (``--multirun``, ``--cfg``, ``--help``...), whose sweeps and
    options Hydra validates itself.
    """
    if any(arg.startswith("-") for arg in argv) or os.environ.get("HYDRA_FULL_ERROR") == "1":
        return
    try:
        with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
            compose(config_name, overrides=argv)
    except (HydraException, OmegaConfBaseException) as err:
        fail(one_line(err))


def resolve_device(name: str) -> torch.device:
    """The ``device=`` option: ``auto`` is the GPU if there is one, else the CPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise ConfigError(f"device={name} is not a device: use auto, cpu, cuda or cuda:N") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={name}, but there is no CUDA GPU: use device=auto or cpu")
    return device


class ImagesPerSecond(progress.ProgressColumn):
    """A progress bar column: throughput in images/s."""

    def render(self, task: progress.Task) -> Text:
        return Text(f"{task.speed or 0:.1f} images/s")


def image_progress(console: Console) -> progress.Progress:
    """A progress bar over images: bar, done/total, elapsed time, images/s."""
    columns = (progress.MofNCompleteColumn(), progress.TimeElapsedColumn(), ImagesPerSecond())
    return progress.Progress(
        *progress.Progress.get_default_columns()[:2], *columns, console=console
    )


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


def run_app(task: Callable[[DictConfig], Any], config_name: str = "config") -> None:
    """Run ``task`` as a Hydra app on ``conf/<config_name>.yaml`` with one-line user errors."""

    @functools.wraps(task)
    def guarded(cfg: DictConfig) -> Any:
        try:
            return task(cfg)
        except TrainingDiverged as err:
            print(f"error: {one_line(err)}", file=sys.stderr)
            raise SystemExit(1) from None  # not a usage error: the run itself failed
        except Exception as err:
            if is_out_of_memory(err) and os.environ.get("HYDRA_FULL_ERROR") != "1":
                fail(out_of_memory_hint(err))
            user_error = _root_user_error(err)
            if user_error is None or os.environ.get("HYDRA_FULL_ERROR") == "1":
                raise
            fail(describe(user_error))

    check_overrides(sys.argv[1:], config_name)
    app = hydra.main(config_path=str(CONFIG_DIR), config_name=config_name, version_base="1.3")
    app(guarded)()
