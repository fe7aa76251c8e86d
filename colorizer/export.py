"""Export a trained model to ONNX: ``python -m colorizer.export ckpt_path=X output=model.onnx``.

The graph maps normalised L ``l_norm`` float32 ``[B, 1, H, W]`` (``L / 50 - 1``) to normalised
ab ``ab_norm`` ``[B, 2, H, W]`` (``ab / 110``), as the model's ``forward`` does; fullcnn's
frozen Inception-ResNet-v2 embedding branch is part of it. The batch is always dynamic; H and
W too for fully convolutional models (any multiple of ``size_multiple``), while the pix2pix
U-Net is fixed at its working size. The normalisation constants and the model's spec (name,
geometry, training size) are stored as ``colorizer.*`` metadata
(``colorizer.inference.onnx_metadata``), which ``python -m colorizer.colorize
ckpt_path=model.onnx`` reads.

The file is then verified: onnxruntime and PyTorch run the same random inputs (at the working
size, and at a second, non-square size when that is dynamic) and the largest difference is
printed. Exit status 1 if it exceeds ``tolerance``.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from colorizer.cli import run_app
from colorizer.errors import ConfigError
from colorizer.hints import random_hints
from colorizer.inference import ONNX_HINTS, ONNX_INPUT, ONNX_OUTPUT, OnnxNetwork, onnx_metadata
from colorizer.models import ColorizationModule, load_model
from colorizer.report import write_report

log = logging.getLogger(__name__)


def export(cfg: DictConfig) -> dict[str, Any]:
    """Write ``cfg.output`` from ``cfg.ckpt_path`` and verify it; returns the summary."""
    output = Path(str(cfg.output))
    if output.suffix.lower() != ".onnx":
        raise ConfigError(f"output={output} must be an .onnx file name")
    model = load_model(str(cfg.ckpt_path))
    spec = model.spec
    size = spec.working_size(cfg.size)
    model.allow_bf16 = False  # the graph and its check are float32 throughout
    for chatty in ("onnxscript", "onnx_ir"):  # their INFO lines list every optimisation pass
        logging.getLogger(chatty).setLevel(logging.WARNING)
    input_size = spec.input_size
    if input_size is None and not cfg.dynamic_size:
        input_size = _round_to(size, spec.size_multiple)
    working = input_size or _round_to(size, spec.size_multiple)
    example = torch.rand(2, 1, working, working) * 2 - 1
    dims = _dynamic_dims(model, fixed=input_size is not None)
    inputs, names, shapes = (example,), [ONNX_INPUT], {"l_norm": dims}
    if spec.hints:  # a second input: the hint map (zeros where there is no hint)
        inputs += (example_hints(example, torch.Generator().manual_seed(1)),)
        names.append(ONNX_HINTS)
        shapes["hints"] = dims
    with warnings.catch_warnings():
        # l_norm and hints share their dimensions, as they must; the exporter notes that the
        # second input's axis names are then unused.
        warnings.filterwarnings("ignore", message=r"# The axis name")
        program = torch.onnx.export(
            model,
            inputs,
            input_names=names,
            output_names=[ONNX_OUTPUT],
            dynamic_shapes=shapes,
            opset_version=cfg.opset,
            dynamo=True,
            verbose=False,
        )
    exported = replace(spec, input_size=input_size)  # a fixed-size export says so
    program.model.metadata_props.update(onnx_metadata(exported, Path(cfg.ckpt_path).name))
    output.parent.mkdir(parents=True, exist_ok=True)
    program.save(str(output))
    max_difference = verify(model, output, working, dynamic=input_size is None)
    summary = {
        "model": spec.name,
        "output": str(output.resolve()),
        "megabytes": round(output.stat().st_size / 2**20, 1),
        "input_size": input_size,
        "size_multiple": spec.size_multiple,
        "image_size": spec.image_size,
        "hints": spec.hints,
        "opset": cfg.opset,
        "max_abs_difference": max_difference,
        "tolerance": cfg.tolerance,
    }
    shape = (
        f"{input_size} x {input_size}" if input_size else f"H, W multiples of {spec.size_multiple}"
    )
    inputs = f"[B, 1, {shape}]" + (" and hints [B, 3, same]" if spec.hints else "")
    lines = [
        f"Exported {summary['model']} ({summary['megabytes']} MB), input {inputs}",
        f"onnxruntime vs PyTorch on random input: max |difference| = {max_difference:.3g}",
    ]
    write_report(Path(str(cfg.paths.output_dir)), summary, json_name="export.json",
                 lines=lines, also_wrote=[output])  # fmt: skip
    return summary


def _round_to(size: int, multiple: int) -> int:
    return max(multiple, round(size / multiple) * multiple)


def _dynamic_dims(model: ColorizationModule, fixed: bool) -> dict[int, Any]:
    """torch.export dimension specs of ``l_norm``: batch, and H, W unless ``fixed``."""
    dims: dict[int, Any] = {0: torch.export.Dim("batch", min=1, max=4096)}
    if not fixed:
        multiple = model.size_multiple
        dims[2] = multiple * torch.export.Dim("height_blocks", min=1, max=32768 // multiple)
        dims[3] = multiple * torch.export.Dim("width_blocks", min=1, max=32768 // multiple)
    return dims


@torch.no_grad()
def verify(model: ColorizationModule, path: Path, working: int, dynamic: bool) -> float:
    """Largest |onnxruntime - PyTorch| of normalised ab on random inputs of the export's shapes."""
    network = OnnxNetwork(path, torch.device("cpu"))
    generator = torch.Generator().manual_seed(0)
    shapes = [(2, 1, working, working)]
    if dynamic:
        multiple = model.size_multiple
        shapes.append((1, 1, _round_to(working // 2, multiple), working + multiple))
    difference = 0.0
    for shape in shapes:
        l_norm = torch.rand(shape, generator=generator) * 2 - 1
        hints = example_hints(l_norm, generator) if model.takes_hints else None
        expected = model(l_norm, hints).float()
        difference = max(difference, (network(l_norm, hints) - expected).abs().max().item())
    return difference


def example_hints(l_norm: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A random hint map ``[B, 3, H, W]`` for ``l_norm``'s shape: eight patches an image."""
    fake_ab = torch.rand(l_norm.shape[0], 2, *l_norm.shape[2:], generator=generator) * 2 - 1
    counts = torch.full((l_norm.shape[0],), 8)
    return random_hints(fake_ab, counts, 8, 5, generator=generator)


def _cli(cfg: DictConfig) -> None:
    summary = export(cfg)
    if not summary["max_abs_difference"] <= cfg.tolerance:
        print(
            f"error: the export differs from PyTorch by {summary['max_abs_difference']:.3g} "
            f"> tolerance={cfg.tolerance}; try another opset (opset=17) and report it",
            flush=True,
        )
        raise SystemExit(1)


def main() -> None:
    run_app(_cli, config_name="export")


if __name__ == "__main__":
    main()
