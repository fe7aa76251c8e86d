"""A walk through the mistakes a user can make: each ends in one line naming the fix, exit 2."""

import io
import os
import pickle
import re

import pytest
import torch

from colorizer.error_lines import one_line
from colorizer.errors import DataError, require_int
from colorizer.registry import MODELS
from tests.helpers import QUICK, SMALL_MODELS, assert_one_line_error

MISTAKES = {
    # The line also lists the choices there are.
    "unknown config choice": (["model=nope"], "Could not find 'model/nope'", "alpha"),
    "unknown key": (["model=alpha", "model.depthh=3"], "model.depthh"),
    "missing required key": (["data=coco"], "data.root is required: add data.root=VALUE"),
    "wrong type": (["model=alpha", "model.lr=fast"], "model.lr must be a positive number"),
    "bad value": (["model=alpha", "data.batch_size=0"], "data.batch_size=0 must be an integer"),
    "a Trainer argument Lightning refuses": (
        ["model=alpha", "trainer.max_steps=-5"],
        "invalid value under trainer: `max_steps` must be a non-negative integer or -1",
    ),
    "out of memory": (
        ["model=alpha", "data=synthetic", "data.image_size=200000"],  # a 480 GB batch
        "out of memory in RAM: lower data.batch_size or data.image_size",
    ),
}


@pytest.mark.parametrize("mistake", list(MISTAKES))
def test_mistake_is_one_line(main_of, mistake):
    overrides, *fragments = MISTAKES[mistake]
    result = main_of("colorizer.run", *overrides, "trainer=debug", "logger=none")
    assert_one_line_error(result, *fragments)


@pytest.mark.parametrize(
    ("sweep", "fragment"),
    [
        (["model=alpha,betta"], "Could not find 'model/betta'"),  # the second value of a sweep
        (["model=alpha", "model.lrr=1e-3,3e-4"], "model.lrr"),
        (["model=alpha", "model.lr=1e-3,,"], "'model.lr=1e-3,,' is not a valid override"),
    ],
)
def test_mistake_in_a_sweep_is_one_line_before_any_job(main_of, tmp_path, sweep, fragment):
    result = main_of("colorizer.run", "--multirun", *sweep, "hydra.sweep.dir=sweep", *QUICK)
    assert_one_line_error(result, fragment)
    assert not (tmp_path / "sweep").exists()


@pytest.mark.parametrize("name", MODELS.names())
def test_a_training_size_the_model_cannot_take_is_one_line_before_any_data(main_of, name):
    cls = MODELS.get(name)
    multiple = cls(**cls.small_settings).spec.training_multiple
    size = 3 * multiple + multiple // 2  # between two sides it takes
    result = main_of("colorizer.run", *SMALL_MODELS[name], *QUICK, f"data.image_size={size}")
    assert_one_line_error(
        result, f"model={name} trains on sides that are multiples of {multiple}",
        f"data.image_size={size}", f"use data.image_size={3 * multiple} or {4 * multiple}",
    )  # fmt: skip
    assert "training " not in result.stdout  # refused before any data or training


def test_a_plain_cnn_at_100_names_96_and_104(main_of):
    result = main_of("colorizer.run", "model=alpha", *QUICK, "data.image_size=100")
    assert_one_line_error(result, "multiples of 8", "use data.image_size=96 or 104")


def test_a_gan_size_says_the_multiple_and_the_depth(main_of):
    result = main_of("colorizer.run", *SMALL_MODELS["gan"], *QUICK, "data.image_size=100")
    assert_one_line_error(result, "model=gan trains on sides that are multiples of 32",
                          "use data.image_size=96 or 128", "or a smaller model.depth")  # fmt: skip


def test_empty_dataset_says_so(main_of, tmp_path):
    (tmp_path / "empty").mkdir()
    result = main_of("colorizer.run", "model=alpha", "data.root=empty", "trainer=debug")
    assert_one_line_error(result, "empty contains no image files", "add images or fix data.root")


def test_checkpoint_of_another_model_or_other_settings(main_of, checkpoint_of):
    gan = checkpoint_of("gan")
    result = main_of("colorizer.run", "model=alpha", *QUICK, f"ckpt_path={gan}")
    assert_one_line_error(
        result, "is a gan checkpoint, but this run builds model=alpha: add model=gan"
    )
    wider = [*SMALL_MODELS["gan"], "model.base_channels=32"]
    result = main_of("colorizer.run", *wider, *QUICK, f"ckpt_path={gan}")
    assert_one_line_error(result, "was trained with other model settings",
                          "model.base_channels=16 there, 32 here")  # fmt: skip


@pytest.mark.parametrize("value", [0, -3, 2.0, True, "4", None])
def test_require_int_names_the_key_and_what_it_needs(value):
    with pytest.raises(
        DataError, match=rf"^data.batch_size={re.escape(repr(value))} must be an integer >= 1$"
    ):
        require_int("data.batch_size", value, error=DataError)
    assert require_int("num_workers", 0, least=0) == 0


def test_a_photo_that_runs_the_cpu_out_of_memory_is_named_so() -> None:
    from colorizer.colorize import _describe_failure

    cpu = RuntimeError(
        "[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: "
        "can't allocate memory: you tried to allocate 1 bytes.\nsecond line"
    )
    assert _describe_failure(cpu).startswith("out of memory")
    other = RuntimeError("shape mismatch\nin conv2d")
    assert _describe_failure(other) == "RuntimeError: shape mismatch in conv2d"


def test_the_rate_column_shows_no_rate_before_one_and_the_mean_after_one_update() -> None:
    from rich.console import Console

    from colorizer.console import ImagesPerSecond, image_progress

    bar = image_progress(Console(file=io.StringIO()))
    task = bar.add_task("colorizing", total=4, unit="frames")
    column = ImagesPerSecond()
    assert column.render(bar.tasks[task]).plain == "- frames/s"
    bar.start_task(task)
    bar.tasks[task].start_time -= 2.0  # two seconds on the task's clock, then all 4 at once
    bar.update(task, completed=4)
    rate = float(column.render(bar.tasks[task]).plain.split()[0])
    assert 1.5 < rate <= 2.0


@pytest.mark.parametrize("kind", ["truncated", "malicious", "not a checkpoint"])
def test_an_unreadable_checkpoint_to_resume_from_is_one_line(
    main_of, checkpoint_of, tmp_path, kind
):
    bad = tmp_path / "bad.ckpt"
    if kind == "truncated":
        bad.write_bytes(checkpoint_of("alpha").read_bytes()[:5000])
    elif kind == "malicious":  # a pickle that would run a command; weights_only refuses it
        bad.write_bytes(pickle.dumps(MaliciousPayload()))
    else:
        bad.write_text("hello")
    result = main_of("colorizer.run", "model=alpha", *QUICK, f"ckpt_path={bad}")
    assert_one_line_error(result, f"{bad} is not a readable checkpoint")
    assert not (tmp_path / "pwned").exists()


class MaliciousPayload:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


class _FailingInAWorker(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 1

    def __getitem__(self, index: int):
        raise DataError("shard s3://b/p/train-000003.tar cannot be read (truncated)")


def test_an_error_raised_in_a_loader_worker_reads_as_its_own_one_line():
    """PyTorch re-raises a worker's exception with the worker's whole traceback as message."""
    loader = torch.utils.data.DataLoader(_FailingInAWorker(), num_workers=1)
    with pytest.raises(DataError) as raised:
        next(iter(loader))
    assert "Traceback" in str(raised.value)  # what the user would otherwise see
    assert one_line(raised.value) == "shard s3://b/p/train-000003.tar cannot be read (truncated)"
