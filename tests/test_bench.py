"""colorizer.bench: runs briefly, reports every measure; timing itself is never asserted."""

import json
import math
import os

import lightning as L
import pytest
import torch
from hydra.utils import instantiate
from torch.utils.data import DataLoader

from colorizer.bench import bench
from colorizer.bench.training import SameBatch, peak_bf16_tflops, plain_step
from tests.helpers import SMALL_MODELS

BRIEF = ["warmup=1", "steps=2", "repeats=1", "data_batches=2"]
BRIEF += ["video.frames=3", "video.width=64", "video.height=48", "video.size=32"]
BRIEF += ["video.repeats=1", "end_to_end.steps=0"]
# A real run, long enough for one timed training batch after the throughput's warm-up.
END_TO_END = ["end_to_end.steps=3", "callbacks.throughput.warmup_batches=1", "logger=none"]
TRAINING_KEYS = ("train_images_per_s", "plain_images_per_s", "infer_images_per_s")
DATA_KEYS = ("data_images_per_s", "data_uncached_images_per_s", "data_workers_images_per_s")
DATA_KEYS += ("reference_data_images_per_s",)


def test_cli_writes_bench_json_with_every_measure(main_of, tmp_path):
    result = main_of("colorizer.bench", *BRIEF, *END_TO_END, "hydra.run.dir=run")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "warning" not in result.stderr  # Lightning's advice does not fit a timed loop
    report = json.loads((tmp_path / "run" / "bench.json").read_text())
    assert (report["model"], report["data"], report["image_size"]) == ("alpha", "curated", 128)
    video_keys = ("video_frames_per_s", "video_flow_frames_per_s")
    run_keys = ("end_to_end_images_per_s", "run_efficiency")
    for key in (*TRAINING_KEYS, *DATA_KEYS, "data_speedup", "data_speedup_uncached", *video_keys,
                *run_keys):  # fmt: skip
        assert report[key] > 0 and math.isfinite(report[key]), key
    # The headline is a real run's: its run directory holds what colorizer.run writes.
    run = tmp_path / "run" / "run0"
    summary = json.loads((run / "metrics.json").read_text())
    assert report["end_to_end_images_per_s"] == summary["train_images_per_s"]
    assert report["run_efficiency"] == pytest.approx(
        report["end_to_end_images_per_s"] / report["train_images_per_s"]
    )
    assert summary["global_step"] == 3 and (run / "checkpoints" / "last.ckpt").is_file()
    assert list((run / "samples").glob("*.png"))
    assert report["lightning_overhead"] == pytest.approx(  # one pair of runs (repeats=1)
        report["plain_images_per_s"] / report["train_images_per_s"]
    )
    assert report["data_speedup"] == pytest.approx(
        report["data_images_per_s"] / report["reference_data_images_per_s"]
    )
    assert (tmp_path / "run" / "resized_cache").is_dir()  # ours reads a resized copy
    # Lab in the main process uses the cores the 2 workers leave (at least 1 thread).
    assert report["data_main_threads"] == max(1, len(os.sched_getaffinity(0)) - 2)
    for measure in ("lightning_overhead", "data_speedup", "run_efficiency"):
        assert measure in result.stdout, measure


def test_gan_benchmark_runs_both_steps_without_image_files(make_cfg):
    report = bench(make_cfg(*SMALL_MODELS["gan"], "data=synthetic", *BRIEF, config_name="bench"))
    assert all(report[key] > 0 for key in TRAINING_KEYS)
    assert report["data_images_per_s"] is None and "needs image files" in report["data_skipped"]


@pytest.mark.parametrize("name", ["alpha", "gan"])
def test_plain_loop_does_the_same_math_as_lightning(make_cfg, name):
    """One step of each loop from the same weights gives the same weights."""
    cfg = make_cfg(*SMALL_MODELS[name], "data=synthetic", config_name="bench")
    batch = torch.randint(0, 256, (4, 3, 64, 64), dtype=torch.uint8)
    L.seed_everything(0)
    initial = instantiate(cfg.model).state_dict()
    models = []
    for loop in ("lightning", "plain"):
        L.seed_everything(0)
        model = instantiate(cfg.model)
        loader = DataLoader(SameBatch(batch, 1), batch_size=None)
        if loop == "lightning":
            trainer = L.Trainer(accelerator="cpu", max_epochs=1, logger=False,
                                enable_checkpointing=False, enable_progress_bar=False,
                                enable_model_summary=False)  # fmt: skip
            trainer.fit(model, train_dataloaders=loader)
        else:
            optimizers = model.configure_optimizers()
            optimizers = optimizers if isinstance(optimizers, list) else [optimizers]
            next(iter(loader))  # the same draws from the global RNG as Lightning's loader
            plain_step(model.train(), optimizers)(batch)
        models.append(model)
    changed = 0
    for (key, trained), (_, plain) in zip(
        models[0].state_dict().items(), models[1].state_dict().items(), strict=True
    ):
        torch.testing.assert_close(trained, plain, msg=key)
        changed += not torch.equal(trained, initial[key])
    assert changed > 0  # both really trained


@pytest.mark.parametrize(
    ("name", "tflops"),
    [
        ("NVIDIA H100 80GB HBM3", 989.4),  # Lightning's table
        ("NVIDIA H100 PCIe", 756.0),
        ("NVIDIA A100-SXM4-80GB", 312.0),
        ("NVIDIA L4", 121.0),
        ("NVIDIA L40", 181.0),  # Lightning 2.6.6 reads any name with "L4" in it as the L4
        ("NVIDIA L40S", 362.0),
        ("NVIDIA H200", 989.4),  # not in Lightning's table
        ("NVIDIA GeForce GTX 1080", None),  # unknown: no fraction rather than a wrong one
    ],
)
def test_peak_bf16_of_each_listed_device(monkeypatch, name, tflops):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    assert peak_bf16_tflops(torch.device("cuda")) == (pytest.approx(tflops) if tflops else None)
