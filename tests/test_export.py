"""colorizer.export: every model to ONNX, checked by onnxruntime against PyTorch."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from PIL import Image

from colorizer.colorize import colorize
from colorizer.errors import ConfigError
from colorizer.export import export
from colorizer.inference import OnnxNetwork
from colorizer.models import load_model
from tests.helpers import SMALL_MODELS, assert_one_line_error, colourful

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "deploy_onnx.py"


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.slow) if n == "fullcnn" else n for n in SMALL_MODELS]
)
def test_export_matches_pytorch_and_colorizes_like_it(make_cfg, tmp_path, checkpoint_of, name):
    checkpoint, onnx_file = checkpoint_of(name), tmp_path / f"{name}.onnx"
    summary = export(
        make_cfg(f"ckpt_path={checkpoint}", f"output={onnx_file}", config_name="export")
    )
    assert summary["max_abs_difference"] < 1e-4
    model = load_model(checkpoint)
    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    metadata = session.get_modelmeta().custom_metadata_map
    assert metadata["colorizer.model"] == name
    assert (metadata["colorizer.l_scale"], metadata["colorizer.ab_scale"]) == ("50.0", "110.0")
    fixed = model.input_size is not None  # the pix2pix U-Net; the others take any size
    assert metadata["colorizer.input_size"] == (str(model.input_size) if fixed else "")

    # A batch size and (where dynamic) a spatial size the export never saw.
    shape = (3, 1, model.input_size, model.input_size) if fixed else (3, 1, 40, 72)
    l_norm = torch.rand(shape, generator=torch.Generator().manual_seed(1)) * 2 - 1
    (ab,) = session.run(["ab_norm"], {"l_norm": l_norm.numpy()})
    with torch.no_grad():
        expected = model(l_norm).numpy()
    np.testing.assert_allclose(ab, expected, atol=1e-4, rtol=0)

    # colorize with the ONNX file gives the same photos as with the checkpoint.
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(colourful(90, 130)).save(photos / "a.png")
    Image.fromarray(colourful(64, 64, 1)[..., 0]).save(photos / "b.png")
    outputs = {}
    for backend, source in (("torch", checkpoint), ("onnx", onnx_file)):
        cfg = make_cfg(
            f"ckpt_path={source}", f"input={photos}", f"output={tmp_path / backend}", "size=64",
            f"backend={backend}", config_name="colorize",
        )  # fmt: skip
        assert colorize(cfg)["colorized"] == 2
        outputs[backend] = [np.asarray(Image.open(tmp_path / backend / f"{f}.png")) for f in "ab"]
    for from_torch, from_onnx in zip(outputs["torch"], outputs["onnx"], strict=True):
        assert np.abs(from_torch.astype(int) - from_onnx).max() <= 1  # 8-bit rounding only


def test_export_cli_and_the_deployment_example(main_of, make_cfg, tmp_path, checkpoint_of):
    result = main_of(
        "colorizer.export", f"ckpt_path={checkpoint_of('alpha')}", "output=alpha.onnx", "size=64"
    )
    assert result.returncode == 0, result.stderr
    assert "input [B, 1, H, W multiples of 8]" in result.stdout
    assert "onnxruntime vs PyTorch on random input: max |difference| = " in result.stdout
    assert (tmp_path / "alpha.onnx").is_file()

    # The README's deployment example (onnxruntime, NumPy, Pillow, skimage; no PyTorch)
    # colorizes like colorizer.colorize does with the same file.
    Image.fromarray(colourful(96, 160)).save(tmp_path / "photo.png")
    example = [sys.executable, str(EXAMPLE), "alpha.onnx", "photo.png", "deployed.png"]
    deployed = subprocess.run(example, cwd=tmp_path, capture_output=True, text=True)
    assert deployed.returncode == 0, deployed.stderr
    cfg = make_cfg(
        f"ckpt_path={tmp_path / 'alpha.onnx'}", f"input={tmp_path / 'photo.png'}",
        f"output={tmp_path / 'out'}", config_name="colorize",
    )  # fmt: skip
    colorize(cfg)
    ours = np.asarray(Image.open(tmp_path / "out" / "photo.png")).astype(int)
    theirs = np.asarray(Image.open(tmp_path / "deployed.png")).astype(int)
    assert ours.shape == theirs.shape == (96, 160, 3)
    assert np.abs(ours - theirs).mean() < 1.0  # resizing details differ, the colours do not
    bad = main_of("colorizer.export", f"ckpt_path={checkpoint_of('alpha')}", "output=alpha.pt")
    assert_one_line_error(bad, "output=alpha.pt must be an .onnx file name")

    # An export further from PyTorch than `tolerance` (here one below alpha's ~3e-8) fails.
    strict = main_of("colorizer.export", f"ckpt_path={checkpoint_of('alpha')}",
                     "output=strict.onnx", "size=64", "tolerance=1e-9")  # fmt: skip
    assert strict.returncode == 1, strict.stdout + strict.stderr
    assert "error: the export differs from PyTorch by " in strict.stdout
    assert "> tolerance=1e-09; try another opset" in strict.stdout


def test_onnx_files_from_elsewhere_are_refused(tmp_path):
    foreign = tmp_path / "foreign.onnx"
    torch.onnx.export(torch.nn.Conv2d(1, 2, 3).eval(), (torch.rand(1, 1, 8, 8),), str(foreign))
    with pytest.raises(ConfigError, match="has no colorizer metadata: export it with"):
        OnnxNetwork(foreign, torch.device("cpu"))
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x00not onnx")
    with pytest.raises(ConfigError, match="is not a readable ONNX model"):
        OnnxNetwork(garbage, torch.device("cpu"))
