"""The whole run's throughput: ``colorizer.run``'s own training, as a user starts it.

The step-only and data-path rows time one piece each; this row is the number that counts.
It runs :func:`colorizer.run.train` on the benchmark's config (the same model, data source
reading its files, trainer, callbacks with their checkpoints and sample grids, and logger)
for ``end_to_end.steps`` optimizer steps, and reads the run's own steady-state
``train_images_per_s`` (:class:`~colorizer.callbacks.TrainingThroughput`: data loading
included, warm-up and validation excluded). ``run_efficiency`` is its ratio to the step
alone: 1.0 means the data, callbacks, checkpoints and logging cost nothing.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, open_dict

from colorizer.errors import ConfigError, require_int


def end_to_end_rates(cfg: DictConfig, step_rate: float) -> dict[str, Any]:
    """images/s of ``end_to_end.repeats`` real training runs (the median) and its ratio to
    ``step_rate``, the step alone (``end_to_end.steps=0``: not measured)."""
    steps = require_int("end_to_end.steps", cfg.end_to_end.steps, least=0)
    if not steps:
        return {}
    from colorizer.run import train  # deferred: the benchmark's other rows need none of it

    runs, waits, summary = [], [], {}
    for repeat in range(require_int("end_to_end.repeats", cfg.end_to_end.repeats)):
        run_cfg = cfg.copy()
        with open_dict(run_cfg):
            run_cfg.paths.output_dir = str(Path(cfg.paths.output_dir) / f"run{repeat}")
            run_cfg.trainer.max_steps = steps
        summary = train(run_cfg)
        runs.append(summary["train_images_per_s"])
        waits.append(summary["train_data_wait_fraction"])
    if None in runs:  # too few steps to time anything after the warm-up batches
        raise ConfigError(
            f"end_to_end.steps={steps} leaves no training batch to time after "
            f"callbacks.throughput.warmup_batches={cfg.callbacks.throughput.warmup_batches}: "
            "raise end_to_end.steps"
        )
    rate = statistics.median(runs)
    return {
        "end_to_end_images_per_s": rate,
        "run_efficiency": rate / step_rate,
        "end_to_end_data_wait_fraction": statistics.median(waits),
        "end_to_end_runs_images_per_s": runs,
        "end_to_end_steps": steps,
        "end_to_end_run_dir": summary["run_dir"],
    }
