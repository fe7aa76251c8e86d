"""Colorization at full resolution, by a trained model or by its ONNX export.

The network predicts chroma at a working size; the chroma is resized (bilinear, antialiased) to the
photo's own size and merged with the photo's own full-resolution L. Chroma is smooth, so
little is lost by predicting it small, and no detail is lost at all: the output's L is the
input's, up to sRGB gamut clipping and 8-bit rounding.

Both backends are a :class:`ChromaNetwork`: normalised L ``[B, 1, h, w]`` in [-1, 1] ->
normalised ab ``[B, 2, h, w]`` float32 in [-1, 1], with the geometry the network needs.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from colorizer.color import AB_SCALE, L_SCALE, merge_lab, normalize_l, rgb_to_lab
from colorizer.errors import ConfigError
from colorizer.full_resolution import merge_in_strips, resize_planes, working_lightness
from colorizer.hints import HINT_CHANNELS, HintPoint
from colorizer.models import ColorizationModule, load_model
from colorizer.models.base import predict_ab_with
from colorizer.models.spec import ModelSpec

BACKENDS = ("auto", "torch", "onnx")
PRECISIONS = ("auto", "32", "bf16")
ONNX_INPUT, ONNX_HINTS, ONNX_OUTPUT = "l_norm", "hints", "ab_norm"
# ONNX metadata keys (all prefixed "colorizer."): what a deployment needs besides the graph.
META = "colorizer."


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


class ChromaNetwork:
    """A colorization network with its spec (name, geometry, training size).

    Attributes:
        spec: what the checkpoint or ONNX file says about the model (``ModelSpec``).
        device: where its inputs must be.
    """

    spec: ModelSpec
    device: torch.device

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def input_size(self) -> int | None:
        return self.spec.input_size

    def __call__(self, l_norm: torch.Tensor, hints: torch.Tensor | None = None) -> torch.Tensor:
        raise NotImplementedError

    def predict_ab(
        self, l_norm: torch.Tensor, hints: Sequence[Sequence[HintPoint]] | None = None
    ) -> torch.Tensor:
        """Normalised ab for normalised L of any size (resized or padded as the net needs),
        with each image's hints (a hint-taking network only)."""
        if hints is not None and not any(hints):
            hints = None
        if hints is not None and not self.spec.hints:
            raise ConfigError(f"model={self.name} takes no hints: train it with model.hints=true")
        return predict_ab_with(
            self, l_norm, input_size=self.spec.input_size, size_multiple=self.spec.size_multiple,
            hints=hints,
        )  # fmt: skip


class TorchNetwork(ChromaNetwork):
    """A trained ``ColorizationModule``; its forward in bf16 autocast if ``bf16``."""

    def __init__(self, model: ColorizationModule, device: torch.device, bf16: bool = False):
        self.model = model.to(device).eval()
        self.spec = model.spec
        self.device, self.bf16 = device, bf16

    def __call__(self, l_norm: torch.Tensor, hints: torch.Tensor | None = None) -> torch.Tensor:
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            return (self.model(l_norm) if hints is None else self.model(l_norm, hints)).float()


class OnnxNetwork(ChromaNetwork):
    """An ONNX file written by ``colorizer.export``, run by onnxruntime (on CUDA if asked)."""

    def __init__(self, path: str | Path, device: torch.device):
        import onnxruntime as ort  # deferred: only this backend needs it

        providers = ["CPUExecutionProvider"]
        if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        try:
            self.session = ort.InferenceSession(str(path), providers=providers)
        except Exception as err:  # onnxruntime raises its own exception types
            first_line = str(err).strip().splitlines()[0][:200] if str(err).strip() else ""
            raise ConfigError(f"{path} is not a readable ONNX model ({first_line})") from err
        metadata = read_metadata(self.session.get_modelmeta().custom_metadata_map, path)
        self.spec = ModelSpec.from_dict({**metadata, "name": metadata["model"]})
        self.device = device

    def __call__(self, l_norm: torch.Tensor, hints: torch.Tensor | None = None) -> torch.Tensor:
        inputs = {ONNX_INPUT: l_norm.detach().float().cpu().numpy()}
        if self.spec.hints:  # the graph always takes the hint map; zeros: no hint
            if hints is None:
                hints = l_norm.new_zeros(l_norm.shape[0], HINT_CHANNELS, *l_norm.shape[2:])
            inputs[ONNX_HINTS] = hints.detach().float().cpu().numpy()
        (ab,) = self.session.run([ONNX_OUTPUT], inputs)
        return torch.from_numpy(ab).to(l_norm.device)


def onnx_metadata(spec: ModelSpec, source: str) -> dict:
    """What ``OnnxNetwork`` (or any deployment) needs to feed the exported graph: the model's
    spec (``input_size`` is the exported graph's fixed size, if any) and the normalisation."""
    return {
        f"{META}model": spec.name,
        f"{META}source": source,
        f"{META}input": f"{ONNX_INPUT}: float32 [B, 1, H, W], CIE L (D65) as L / {L_SCALE:g} - 1",
        f"{META}output": f"{ONNX_OUTPUT}: float32 [B, 2, H, W], CIE a, b as ab / {AB_SCALE:g}",
        f"{META}l_scale": repr(L_SCALE),
        f"{META}ab_scale": repr(AB_SCALE),
        f"{META}input_size": "" if spec.input_size is None else str(spec.input_size),
        f"{META}size_multiple": str(spec.size_multiple),
        f"{META}image_size": "" if spec.image_size is None else str(spec.image_size),
        f"{META}hints": "true" if spec.hints else "false",
        f"{META}hints_input": (
            f"{ONNX_HINTS}: float32 [B, 3, H, W], hint a and b / {AB_SCALE:g} where channel 2 "
            "(the mask) is 1, zeros elsewhere"
            if spec.hints
            else ""
        ),
    }


def read_metadata(metadata: dict[str, str], path: str | Path) -> dict[str, str]:
    """The ``colorizer.*`` metadata of an exported model, checked against this version's."""
    values = {key[len(META) :]: value for key, value in metadata.items() if key.startswith(META)}
    required = ("model", "l_scale", "ab_scale", "input_size", "size_multiple")
    if any(key not in values for key in required):
        raise ConfigError(
            f"{path} has no colorizer metadata: export it with python -m colorizer.export"
        )
    if (float(values["l_scale"]), float(values["ab_scale"])) != (L_SCALE, AB_SCALE):
        raise ConfigError(
            f"{path} normalises L and ab by {values['l_scale']} and {values['ab_scale']}, this "
            f"version by {L_SCALE} and {AB_SCALE}: re-export it with this version"
        )
    return values


def open_network(
    path: str | Path, backend: str = "auto", device: torch.device | None = None, bf16: bool = False
) -> ChromaNetwork:
    """The network in ``path``: a ``.ckpt`` (PyTorch) or an ``.onnx`` file (onnxruntime)."""
    if backend not in BACKENDS:
        raise ConfigError(f"backend={backend} is not one of: {', '.join(BACKENDS)}")
    device = device or torch.device("cpu")
    if backend == "auto":
        backend = "onnx" if Path(path).suffix.lower() == ".onnx" else "torch"
    if not Path(path).is_file():
        raise ConfigError(f"ckpt_path={path} does not exist: pass a .ckpt or .onnx file")
    if backend == "onnx":
        return OnnxNetwork(path, device)
    return TorchNetwork(load_model(path), device, bf16=bf16)


def working_shape(height: int, width: int, size: int, input_size: int | None) -> tuple[int, int]:
    """The (h, w) the network sees for an H x W photo.

    A fixed-size network sees its own square. A fully convolutional one sees the photo with
    its aspect ratio kept and its shorter side at ``size``, the scale training crops have.
    """
    if input_size is not None:
        return input_size, input_size
    scale = size / min(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


@torch.no_grad()
def colorize_full_resolution(
    network: ChromaNetwork,
    images: list[torch.Tensor],
    size: int,
    hints: Sequence[Sequence[HintPoint]] | None = None,
) -> list[torch.Tensor]:
    """Colorize photos of any sizes, each at its own full resolution.

    Args:
        network: the backend.
        images: uint8 ``[3, H, W]`` sRGB, or gray ``[1, H, W]`` uint8 or uint16; colour is
            ignored, only each photo's luminance is used.
        size: the working size (``working_shape``).
        hints: for a hint-taking network, each photo's ``HintPoint`` list (None: no hints).

    Returns:
        sRGB ``[3, H, W]`` on the CPU, each the size of its input, with its L; uint16 for a
        uint16 photo, else uint8. Merged in strips (``colorizer.full_resolution``), so the
        memory it takes beyond the input and output does not grow with the photo.
    """
    device, fixed = network.device, network.input_size
    small = [
        working_lightness(image, working_shape(*image.shape[-2:], size, fixed), device)
        for image in images
    ]
    chroma = working_chroma(network, small, size, hints)
    return [merge_in_strips(image, ab) for image, ab in zip(images, chroma, strict=True)]


def full_lightness(images: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    """uint8 sRGB ``[3, H, W]`` (or batches ``[B, 3, H, W]``) each -> normalised L
    ``[1, 1, H, W]`` (``[B, 1, H, W]``) in [-1, 1] on ``device``."""
    batches = (image if image.dim() == 4 else image[None] for image in images)
    return [normalize_l(rgb_to_lab(batch.to(device))[:, :1]) for batch in batches]


@torch.no_grad()
def working_chroma(
    network: ChromaNetwork,
    lightness: list[torch.Tensor],
    size: int,
    hints: Sequence[Sequence[HintPoint]] | None = None,
) -> list[torch.Tensor]:
    """Normalised ab ``[1, 2, h, w]`` in [-1, 1] of each normalised L ``[1, 1, H, W]``, at its
    working shape ``(h, w)`` (``working_shape``); images sharing one share a forward pass."""
    groups: dict[tuple[int, int], list[int]] = {}
    for i, l_full in enumerate(lightness):
        groups.setdefault(working_shape(*l_full.shape[-2:], size, network.input_size), []).append(i)
    chroma: dict[int, torch.Tensor] = {}
    for shape, members in groups.items():
        small = torch.cat([resize_planes(lightness[i], shape) for i in members])
        group_hints = [hints[i] for i in members] if hints is not None else None
        for i, ab in zip(members, network.predict_ab(small, group_hints).split(1), strict=True):
            chroma[i] = ab
    return [chroma[i] for i in range(len(lightness))]


def merge_full_resolution(l_full: torch.Tensor, ab: torch.Tensor) -> torch.Tensor:
    """Normalised L ``[B, 1, H, W]`` + normalised ab ``[B, 2, h, w]`` at any size -> uint8 sRGB
    ``[B, 3, H, W]`` on the CPU: ab resized to the L's size, out-of-gamut colours desaturated
    so the L is kept."""
    ab_full = resize_planes(ab, tuple(l_full.shape[-2:]))
    rgb = merge_lab(l_full, ab_full, keep_lightness=True)
    return rgb.mul(255.0).round_().to(torch.uint8).cpu()
