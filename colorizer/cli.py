"""What every Hydra entry point shares: the config folder and one-line errors.

Every mistake a user can make ends in a single ``error: ...`` line on stderr and exit status 2,
never a traceback: bad overrides are caught by composing the config once before Hydra runs
(:mod:`colorizer.overrides`), and errors raised inside the job (a missing folder, a bad value)
by ``run_app``'s guard (:mod:`colorizer.error_lines`). ``HYDRA_FULL_ERROR=1`` shows the full
traceback for debugging, as in Hydra itself.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig

from colorizer.console import quiet_libraries
from colorizer.error_lines import (
    describe,
    is_out_of_memory,
    one_line,
    out_of_memory_hint,
    user_error_behind,
)
from colorizer.errors import ConfigError, TrainingDiverged
from colorizer.overrides import check_overrides

CONFIG_DIR = Path(__file__).resolve().parent.parent / "conf"
USAGE_ERROR = 2


def fail(message: str) -> None:
    """Print one error line and exit with the usage-error status."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(USAGE_ERROR)


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
            user_error = user_error_behind(err)
            if user_error is None or os.environ.get("HYDRA_FULL_ERROR") == "1":
                raise
            fail(describe(user_error))

    try:
        check_overrides(sys.argv[1:], CONFIG_DIR, config_name)
    except ConfigError as err:
        fail(one_line(err))
    app = hydra.main(config_path=str(CONFIG_DIR), config_name=config_name, version_base="1.3")
    app(guarded)()
