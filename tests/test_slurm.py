"""hydra/launcher=slurm: the SLURM job it asks for, a pre-empted job that requeues and
resumes (through submitit's local launcher), and sweeps that DDP would relaunch."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import submitit
from hydra.utils import instantiate
from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
from lightning.pytorch.plugins.environments import SLURMEnvironment
from omegaconf import OmegaConf

from colorizer.run import _strategy_for
from tests.helpers import QUICK, SMALL_MODELS, assert_one_line_error

REPO = Path(__file__).resolve().parents[1]


def test_slurm_launcher_asks_for_one_task_and_gpu_per_device(make_cfg, tmp_path, monkeypatch):
    # submitit only writes the script where SLURM's srun exists: a stand-in that is never run.
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "srun").write_text("#!/bin/sh\nexit 1\n")
    (tmp_path / "bin" / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    cfg = make_cfg(
        "hydra/launcher=slurm", "trainer=ddp", "trainer.devices=4", "trainer.num_nodes=2",
        "hydra.launcher.partition=gpu", "hydra.sweep.dir=/scratch/sweep",
    )  # fmt: skip
    params = dict(instantiate(cfg.hydra.launcher).params)
    # The sbatch script submitit writes from them, passed as the launcher passes them.
    generic = set(OmegaConf.structured(BaseQueueConf).keys())
    executor = submitit.AutoExecutor(
        cluster="slurm", folder=params.pop("submitit_folder"),
        slurm_max_num_timeout=params.pop("max_num_timeout"),
    )  # fmt: skip
    executor.update_parameters(
        **{k if k in generic else f"slurm_{k}": v for k, v in params.items()}
    )
    sbatch = executor._executor._make_submission_file_text("python -m submitit", "uid")
    for line in (
        "#SBATCH --nodes=2",
        "#SBATCH --ntasks-per-node=4",
        "#SBATCH --gpus-per-node=4",
        "#SBATCH --partition=gpu",
        "#SBATCH --signal=USR2@300",
        "#SBATCH --time=1440",
    ):
        assert line in sbatch, sbatch
    assert "srun" in sbatch  # SLURM starts the tasks, so Lightning starts no process itself
    assert executor._executor.max_num_timeout == 20


def test_under_slurm_lightning_leaves_requeue_to_submitit(make_cfg, monkeypatch):
    slurm_task = {"SLURM_NTASKS": "1", "SLURM_JOB_NAME": "colorizer", "SLURM_JOB_ID": "42",
                  "SLURM_NODELIST": "node1", "SLURM_PROCID": "0", "SLURM_LOCALID": "0",
                  "SLURM_NODEID": "0"}  # fmt: skip
    for name, value in slurm_task.items():
        monkeypatch.setenv(name, value)
    cfg = make_cfg(*SMALL_MODELS["alpha"], *QUICK, "trainer=ddp", "trainer.devices=1")
    trainer = instantiate(cfg.trainer, **_strategy_for(cfg, instantiate(cfg.model)))
    environment = trainer.strategy.cluster_environment
    assert isinstance(environment, SLURMEnvironment) and not environment.auto_requeue


@pytest.mark.slow
def test_preempted_job_requeues_and_resumes_from_its_last_checkpoint(cli, tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(REPO))  # the jobs import PreemptOnce from tests.helpers
    result = cli(
            "colorizer.run", "--multirun", "hydra/launcher=submitit_local",
            "hydra.launcher.timeout_min=30",
            *SMALL_MODELS["alpha"], *QUICK, "trainer.max_steps=12",
            "trainer.val_check_interval=12",
            "+callbacks.preempt._target_=tests.helpers.PreemptOnce",
            "+callbacks.preempt.step=6", "seed=1",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    # The default sweep dir, multirun/DATE/TIME: the requeued job, seconds later, must find
    # the same one (Hydra's `now` resolver caches its value in the pickled config).
    (sweep,) = (tmp_path / "multirun").glob("*/*")
    run = sweep / "0"  # the one job
    log = (run / "run.log").read_text()  # both tries of the job, submitit's lines too
    assert "Caught signal SIGUSR2" in log and "this job is preempted" in log, log
    assert "Requeued job" in log
    last = run.resolve() / "checkpoints" / "last.ckpt"
    # Saved at the signal, once step 6 was done (no interval save: the run is too short for one).
    assert f"the job is being stopped: saved {last} at step 6" in log
    assert f"Resuming from {last}" in log
    assert (run / "resumed_step").read_text() == "6"
    summary = json.loads((run / "metrics.json").read_text())
    assert summary["global_step"] == 12  # the whole run, not 12 more steps after a restart


def test_slurm_launcher_mistakes_are_one_line(main_of):
    result = main_of("colorizer.run", "hydra/launcher=slurm", *SMALL_MODELS["alpha"], *QUICK)
    assert_one_line_error(result, "submits jobs only with --multirun: add --multirun")
    # Any trainer (here trainer=debug, no num_nodes) composes; this machine has no SLURM.
    result = main_of("colorizer.run", "--multirun", "hydra/launcher=slurm", *SMALL_MODELS["alpha"],
                 *QUICK)  # fmt: skip
    assert_one_line_error(result, "needs SLURM, but sbatch and srun are not on PATH")


def test_multirun_with_ddp_processes_is_refused(main_of):
    result = main_of(
        "colorizer.run", "--multirun", *SMALL_MODELS["alpha"], *QUICK, "trainer=ddp",
        "trainer.accelerator=cpu", "trainer.devices=2", "seed=1,2",
    )  # fmt: skip
    assert_one_line_error(result, "--multirun with DDP", "hydra/launcher=slurm")
