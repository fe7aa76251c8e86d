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
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hydra
import torch
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException, InstantiationException, OverrideParseException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException
from rich import progress
from rich.console import Console
from rich.text import Text

from colorizer.console import quiet_libraries
from colorizer.errors import ConfigError, DataError, TrainingDiverged

CONFIG_DIR = Path(__file__).resolve().parent.parent / "conf"
USAGE_ERROR = 2


USER_ERRORS = (ConfigError, DataError, FileNotFoundError, OmegaConfBaseException)


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
        if isinstance(candidate, USER_ERRORS):
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


MULTIRUN_FLAGS = ("--multirun", "-m")


def check_overrides(argv: list[str], config_name: str) -> None:
    """Compose the config with the user's overrides first, so a bad one fails in one line.

    With ``--multirun``, each value swept for a config group (``model=alpha,betta``) is
    composed once and every other sweep at its first value (:func:`sweep_variants`). Skipped
    for Hydra's other flags (``--cfg``, ``--help``...), whose options Hydra handles itself.
    """
    flags = [arg for arg in argv if arg.startswith("-")]
    full_error = os.environ.get("HYDRA_FULL_ERROR") == "1"
    if full_error or any(flag not in MULTIRUN_FLAGS for flag in flags):
        return
    overrides = [arg for arg in argv if not arg.startswith("-")]
    try:
        variants = sweep_variants(overrides) if flags else [overrides]
        with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
            for variant in variants:
                cfg = compose(config_name, overrides=variant, return_hydra_config=True)
                check_launcher(cfg.hydra.launcher, multirun=bool(flags))
    except OverrideParseException as err:
        grammar = str(err).splitlines()[0]
        fail(f"{err.override!r} is not a valid override ({grammar}): write KEY=VALUE, a sweep "
             "as KEY=A,B (see Hydra's override grammar)")  # fmt: skip
    except (HydraException, OmegaConfBaseException, ConfigError) as err:
        fail(one_line(err))


def check_launcher(launcher: DictConfig, multirun: bool) -> None:
    """``hydra/launcher=slurm`` mistakes that Hydra would report late, or not at all."""
    if not str(launcher.get("_target_", "")).endswith("SlurmLauncher"):
        return
    if not multirun:  # Hydra uses launchers only for sweeps: the job would train right here
        raise ConfigError(
            "hydra/launcher=slurm submits jobs only with --multirun: add --multirun "
            "(a single job is fine)"
        )
    OmegaConf.to_container(launcher, resolve=True)  # a bad ${...} fails now, in one line
    missing = [tool for tool in ("sbatch", "srun") if shutil.which(tool) is None]
    if missing:
        raise ConfigError(
            f"hydra/launcher=slurm needs SLURM, but {' and '.join(missing)} "
            f"{'is' if len(missing) == 1 else 'are'} not on PATH: "
            "run the command on the cluster's login node"
        )


def sweep_variants(overrides: list[str]) -> list[list[str]]:
    """Plain override lists that together use every value swept for a config group.

    Each list holds every override, a sweep at its first value, except that one config-group
    sweep takes another of its values: 1 + sum(n - 1) compositions, not the whole grid. Sweeps
    that cannot be listed before Hydra runs (``interval``, ``glob``) are left to Hydra.
    """
    first: list[str] = []
    alternatives: list[tuple[int, list[str]]] = []
    for override in OverridesParser.create().parse_overrides(overrides):
        key = override.get_key_element()
        if not override.is_sweep_override():
            first.append(override.input_line or f"{key}={override.get_value_element_as_str()}")
            continue
        try:
            values = list(override.sweep_string_iterator())
        except HydraException:
            continue
        if not values:
            continue
        if (CONFIG_DIR / override.key_or_group).is_dir():  # a config group: each file must exist
            alternatives.append((len(first), [f"{key}={value}" for value in values[1:]]))
        first.append(f"{key}={values[0]}")
    variants = [first]
    for position, others in alternatives:
        variants += [first[:position] + [other] + first[position + 1 :] for other in others]
    return variants


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
    """A progress bar column: throughput in images/s (or the task's ``unit`` field: frames)."""

    def render(self, task: progress.Task) -> Text:
        return Text(f"{task.speed or 0:.1f} {task.fields.get('unit', 'images')}/s")


def image_progress(console: Console) -> progress.Progress:
    """A progress bar over images (or video frames): bar, done/total, elapsed and remaining
    time, images/s."""
    columns = (progress.MofNCompleteColumn(), progress.TimeElapsedColumn(),
               progress.TimeRemainingColumn(), ImagesPerSecond())  # fmt: skip
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
        quiet_libraries()  # Hydra has configured logging by now
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
