"""The contract (README, errors): every mistake a user can make ends in one line naming what is
wrong, exit status 2, and writes nothing that looks like a result.

One table: entry point, what the user typed, a phrase the ``error:`` line must hold. Each row
runs the entry point's ``main()`` with that command line (``main_of``: the same argv, working
directory and logging as ``python -m``). Placeholders in the arguments: ``{alpha}`` and
``{gan}`` are small trained checkpoints, ``{bad:KIND}`` a bad file of that kind, ``{photos}``
a folder of two photos, ``{empty}`` an empty folder, ``{file}`` a plain text file.
"""

import os
import pickle
from pathlib import Path

import pytest
import torch
from PIL import Image

from tests.helpers import QUICK, assert_one_line_error, colourful

RESULTS = ("metrics.json", "summary.json", "export.json", "bench.json", "report.md")

# What each entry point needs besides ckpt_path, and the checkpoints it must refuse.
NEEDS = {
    "run": ["model=alpha", *QUICK],
    "evaluate": ["data=synthetic"],
    "colorize": ["input={photos}", "output=out"],
    "export": ["output=m.onnx"],
}
BAD_CHECKPOINTS = {
    "{bad:truncated}": "is not a readable checkpoint",
    "{bad:malicious}": "is not a readable checkpoint",
    "{bad:onnx}": "is not a readable checkpoint",
    "{bad:foreign}": "is not a colorizer checkpoint",
    "{empty}": "does not exist",  # a folder
}
# (entry point, arguments, phrase of the error line)
TABLE = [
    (entry, [*needs, f"ckpt_path={checkpoint}"], phrase)
    for entry, needs in NEEDS.items()
    for checkpoint, phrase in BAD_CHECKPOINTS.items()
    if not (entry == "run" and checkpoint == "{bad:foreign}")  # resumes any Lightning file
] + [
    # run: config, data, sizes, Trainer, resume
    ("run", ["model=nope"], "Could not find 'model/nope'"),
    ("run", ["model=alpha", "model.lr=fast"], "model.lr must be a positive number"),
    ("run", ["model=alpha", "data.root=/nonexistent"], "data.root=/nonexistent does not exist"),
    ("run", ["model=alpha", "data.root={empty}"], "contains no image files"),
    ("run", ["model=alpha", "data.root={file}"], "is a file: point it at a folder of images"),
    ("run", ["model=alpha", "data=coco"], "data.root is required"),
    ("run", ["model=alpha", "data=coco", "data.root={empty}"], "annotations"),
    ("run", ["model=alpha", "data.image_size=100", "data=synthetic"], "multiples of 8"),
    ("run", ["model=alpha", "trainer.max_steps=-5"], "`max_steps` must be a non-negative"),
    ("run", ["model=alpha", "trainer.accelerator=tpu"], "under trainer"),
    ("run", ["model=alpha", *QUICK, "ckpt_path={gan}"], "is a gan checkpoint"),
    ("run", ["model=alpha", *QUICK, "ckpt_path=/tmp"], "does not exist"),
    ("run", ["--multirun", "model=alpha,betta", *QUICK], "Could not find 'model/betta'"),
    # evaluate
    ("evaluate", ["ckpt_path={alpha}", "split=everything"], "split=everything is not one of"),
    ("evaluate", ["ckpt_path={alpha}", "video_size=64"], "use size=64"),
    ("evaluate", ["ckpt_path={alpha}", "size=0"], "size=0 must be an integer >= 1"),
    ("evaluate", ["ckpt_path={alpha}", "hints=0,5", "data=synthetic"], "takes no hints"),
    ("evaluate", ["ckpt_path={alpha}", "videos=/nonexistent"], "videos=/nonexistent does not"),
    ("evaluate", ["ckpt_path={alpha}", "fid_weights=/nonexistent"], "fid_weights=/nonexistent"),
    # colorize
    ("colorize", ["ckpt_path={alpha}", "input=/nonexistent", "output=out"], "does not exist"),
    ("colorize", ["ckpt_path={alpha}", "input={photos}", "output={photos}"], "the input folder"),
    ("colorize", ["ckpt_path={alpha}", "input={photos}", "output={file}"], "is a file: name a"),
    ("colorize", ["ckpt_path={alpha}", "input={photos}", "output=out", "format=bmp"], "format=bmp"),
    ("colorize", ["ckpt_path={alpha}", "input={photos}", "output=out", "hints={file}"], "not JSON"),
    ("colorize", ["ckpt_path={alpha}", "input={photos}", "output=out", "temporal=x"], "temporal=x"),
    # export
    ("export", ["ckpt_path={alpha}", "output=model.txt"], "must be an .onnx file name"),
    # bench
    ("bench", ["model=nope"], "Could not find 'model/nope'"),
    ("bench", ["model=alpha", "data=synthetic", "data.image_size=100"], "multiples of 8"),
    ("bench", ["model=alpha", "data=synthetic", "steps=0"], "steps=0 must be an integer >= 1"),
    # serve
    ("serve", ["ckpt_path={alpha}", "port=0"], "takes no hints"),
    ("serve", ["ckpt_path={bad:malicious}", "port=0"], "is not a readable checkpoint"),
]


class Malicious:
    """Unpickling it would run a command: ``weights_only`` refuses it."""

    def __reduce__(self):
        return (os.system, ("touch pwned",))


def bad_file(folder: Path, kind: str, good: Path) -> Path:
    path = folder / f"{kind}.ckpt"
    if kind == "truncated":
        path.write_bytes(good.read_bytes()[:5000])
    elif kind == "malicious":
        path.write_bytes(pickle.dumps(Malicious()))
    elif kind == "onnx":  # an exported model's bytes where a checkpoint is needed
        path.write_bytes(b"\x08\x08\x12\x07pytorch" + bytes(64))
    elif kind == "foreign":  # a readable file of tensors, but no colorizer's
        torch.save({"state_dict": {"weight": torch.zeros(2)}}, path)
    return path


def fill(arg: str, places: dict[str, Path]) -> str:
    for name, path in places.items():
        arg = arg.replace("{" + name + "}", str(path))
    return arg


@pytest.mark.parametrize(("entry", "args", "phrase"), TABLE, ids=lambda v: str(v)[:40])
def test_every_user_error_is_one_line_and_writes_no_result(
    main_of, checkpoint_of, tmp_path, entry, args, phrase
):
    inputs = tmp_path / "inputs"
    (inputs / "photos").mkdir(parents=True)
    (inputs / "empty").mkdir()
    (inputs / "file.txt").write_text("not an image, nor JSON")
    for i in range(2):
        Image.fromarray(colourful(40, 48, seed=i)).save(inputs / "photos" / f"p{i}.png")
    places = {"alpha": checkpoint_of("alpha"), "photos": inputs / "photos",
              "empty": inputs / "empty", "file": inputs / "file.txt"}  # fmt: skip
    if any("{gan}" in arg for arg in args):
        places["gan"] = checkpoint_of("gan")
    for kind in ("truncated", "malicious", "onnx", "foreign"):
        places[f"bad:{kind}"] = bad_file(inputs, kind, checkpoint_of("alpha"))
    result = main_of(f"colorizer.{entry}", *(fill(arg, places) for arg in args),
                     "hydra.run.dir=run", "hydra.sweep.dir=sweep")  # fmt: skip
    assert_one_line_error(result, phrase)
    written = [p for p in tmp_path.rglob("*") if p.is_file() and inputs not in p.parents]
    results = [p for p in written if p.name in RESULTS or p.suffix in (".ckpt", ".onnx", ".png")]
    assert results == [], results
    assert not (tmp_path / "out").exists() and not (tmp_path / "pwned").exists()


# Where some of the work was done: exit status 1, what failed named, no traceback.
# (entry point, arguments, phrase on stderr, what was written nonetheless)
PARTIAL = [
    ("colorize", ["ckpt_path={alpha}", "input={mixed}", "output=out"],
     "cut.jpg: ", "out/p0.png"),
    ("export", ["ckpt_path={alpha}", "output=m.onnx", "tolerance=0"],
     "the export differs from PyTorch by", "m.onnx"),
]  # fmt: skip


@pytest.mark.parametrize(("entry", "args", "phrase", "kept"), PARTIAL, ids=lambda v: str(v)[:40])
def test_a_partly_done_job_exits_1_naming_what_failed(
    main_of, checkpoint_of, tmp_path, entry, args, phrase, kept
):
    mixed = tmp_path / "inputs" / "mixed"
    mixed.mkdir(parents=True)
    Image.fromarray(colourful(40, 48)).save(mixed / "p0.png")
    (mixed / "cut.jpg").write_bytes(b"\xff\xd8\xff\xe0" + bytes(100))
    places = {"alpha": checkpoint_of("alpha"), "mixed": mixed}
    result = main_of(f"colorizer.{entry}", *(fill(arg, places) for arg in args),
                     "hydra.run.dir=run")  # fmt: skip
    assert result.returncode == 1, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert phrase in result.stderr + result.stdout
    assert (tmp_path / kept).is_file()
