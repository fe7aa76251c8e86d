"""The command line checked before Hydra runs: overrides, sweeps and the SLURM launcher.

Hydra reports a bad override deep in a traceback, and a bad value in a sweep only when that
job starts; composing the config first turns both into one line before any job runs.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException, OverrideParseException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from colorizer.error_lines import one_line
from colorizer.errors import ConfigError

MULTIRUN_FLAGS = ("--multirun", "-m")
# Keys an entry point no longer reads -> what to write instead.
RENAMED = {
    "evaluate": {
        "video_size": "size",
        "data.image_size": "size",  # images and videos are read at the model's size
    },
}


def check_overrides(argv: list[str], config_dir: Path, config_name: str) -> None:
    """Compose the config with the user's overrides first, so a bad one is a ConfigError
    (one line) before Hydra runs anything.

    With ``--multirun``, each value swept for a config group (``model=alpha,betta``) is
    composed once and every other sweep at its first value (:func:`sweep_variants`). Skipped
    for Hydra's other flags (``--cfg``, ``--help``...), whose options Hydra handles itself.
    """
    flags = [arg for arg in argv if arg.startswith("-")]
    full_error = os.environ.get("HYDRA_FULL_ERROR") == "1"
    if full_error or any(flag not in MULTIRUN_FLAGS for flag in flags):
        return
    overrides = [arg for arg in argv if not arg.startswith("-")]
    check_renamed(overrides, RENAMED.get(config_name, {}))
    try:
        variants = sweep_variants(overrides, config_dir) if flags else [overrides]
        with initialize_config_dir(str(config_dir), version_base="1.3"):
            for variant in variants:
                cfg = compose(config_name, overrides=variant, return_hydra_config=True)
                check_launcher(cfg.hydra.launcher, multirun=bool(flags))
    except OverrideParseException as err:
        grammar = str(err).splitlines()[0]
        raise ConfigError(
            f"{err.override!r} is not a valid override ({grammar}): write "
            "KEY=VALUE, a sweep as KEY=A,B (see Hydra's override grammar)"
        ) from err
    except (HydraException, OmegaConfBaseException) as err:
        raise ConfigError(one_line(err)) from err


def check_renamed(overrides: list[str], renamed: dict[str, str]) -> None:
    """Refuse in one line a key this entry point reads under another name."""
    for override in overrides:
        key, _, value = override.lstrip("+~").partition("=")
        if key in renamed:
            raise ConfigError(f"{key}= is written {renamed[key]}= here: use {renamed[key]}={value}")


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


def sweep_variants(overrides: list[str], config_dir: Path) -> list[list[str]]:
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
        if (config_dir / override.key_or_group).is_dir():  # a config group: each file must exist
            alternatives.append((len(first), [f"{key}={value}" for value in values[1:]]))
        first.append(f"{key}={values[0]}")
    variants = [first]
    for position, others in alternatives:
        variants += [first[:position] + [other] + first[position + 1 :] for other in others]
    return variants
