"""What more than one test module uses, and what the processes a test starts import.

Fixtures live in the ``conftest.py`` files (which import from here); test modules import from
here and never from one another. The processes a test starts (``colorizer.run`` under DDP,
SLURM or a signal) load the callbacks below as ``+callbacks.NAME._target_=tests.helpers.CLASS``,
with the repository on their ``PYTHONPATH``.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from collections import Counter
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from io import BytesIO
from pathlib import Path

import lightning as L
import numpy as np
import submitit
import torch
from PIL import Image

from colorizer.registry import MODELS

# --- Settings of runs --------------------------------------------------------------------------

# Small, fast settings for end-to-end runs on two CPU cores.
QUICK = ["data=synthetic", "trainer=debug", "logger=none", "trainer.accelerator=cpu"]

# Small but real settings per registered model (its class's ``small_settings``), for two CPU
# cores: adding a model to the registry adds it to every test that sweeps over the models.
SMALL_MODELS: dict[str, list[str]] = {
    name: [f"model={name}", *(f"model.{k}={v}" for k, v in MODELS.get(name).small_settings.items())]
    for name in MODELS.names()
}


# --- Assertions --------------------------------------------------------------------------------


def assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    """A user error: non-zero exit, one ``error:`` line naming the problem, no traceback."""
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]


# --- Images ------------------------------------------------------------------------------------


def colourful(height: int, width: int, seed: int = 0) -> np.ndarray:
    """uint8 [H, W, 3]: smooth hues plus noise, like a photo's chroma over texture."""
    y, x = np.mgrid[0:height, 0:width] / max(height, width)
    rgb = np.stack([x, y, 1 - (x + y) / 2], axis=-1) * 200
    rgb += np.random.default_rng(seed).uniform(0, 55, (height, width, 3))
    return rgb.astype(np.uint8)


def colour_photo(width: int, height: int, seed: int = 0) -> Image.Image:
    """A smooth, clearly colourful RGB image (smooth so JPEG keeps it close to the original)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width] / max(width, height)
    freq = rng.uniform(0.5, 2.0, size=(3, 2))
    phase = rng.uniform(0, 2 * np.pi, size=3)
    channels = [
        0.5 + 0.45 * np.sin(2 * np.pi * (fx * x + fy * y) + p)
        for (fx, fy), p in zip(freq, phase, strict=True)
    ]
    return Image.fromarray((np.stack(channels, axis=-1) * 255).astype(np.uint8))


def grid_tiles(grid: np.ndarray, rows: int, size: int) -> np.ndarray:
    """The tiles of a sample grid (``colorizer.callbacks.triplet_grid``: ``rows`` rows of gray |
    prediction | truth, ``size`` px squares, 2 px padding): uint8 ``[rows, 3, size, size, 3]``."""
    assert grid.shape == (2 + rows * (size + 2), 2 + 3 * (size + 2), 3), grid.shape
    step = size + 2
    return np.stack([
        np.stack([grid[2 + step * r : step * (r + 1), 2 + step * c : step * (c + 1)]
                  for c in range(3)])
        for r in range(rows)
    ])  # fmt: skip


def truncated_jpeg_bytes(size: int = 128) -> bytes:
    """The first half of a valid JPEG: what an interrupted download leaves behind."""
    buffer = BytesIO()
    colour_photo(size, size, seed=99).save(buffer, "JPEG", quality=90)
    data = buffer.getvalue()
    return data[: len(data) // 2]


# --- A tiny COCO in the official layout (pycocotools reads it for real) ------------------------

COCO_CATEGORIES = [
    {"id": 1, "name": "person"},
    {"id": 17, "name": "cat"},
    {"id": 18, "name": "dog"},
]
# image id -> category ids shown in it
COCO_TRAIN_LABELS = {1: [18], 2: [17], 3: [17, 18], 4: [1], 5: [1], 6: [1, 18], 9: [17]}
# Listed train images that must not be used: a file_name escaping the image folder, a missing
# file, a grayscale image.
COCO_ESCAPING, COCO_MISSING, COCO_GRAY = 10, 11, 12


def write_tiny_coco(folder: Path) -> Path:
    """``folder/coco``: train2017 (COCO_TRAIN_LABELS and the three refused images), val2017
    (201-203) and their annotations; the escaping file_name points at ``folder/escape.jpg``."""
    root = folder / "coco"
    images = []
    for image_id in [*COCO_TRAIN_LABELS, COCO_GRAY]:
        name = f"{image_id:012d}.jpg"
        _colour_image(root / "train2017" / name, image_id, gray=image_id == COCO_GRAY)
        images.append({"id": image_id, "file_name": name, "width": 48, "height": 40})
    # A file_name escaping the image folder, pointing at a real image outside it.
    _colour_image(folder / "escape.jpg", 99)
    images.append({"id": COCO_ESCAPING, "file_name": "../../escape.jpg", "width": 48, "height": 40})
    images.append({"id": COCO_MISSING, "file_name": "000000000011.jpg", "width": 48, "height": 40})
    labels = {**COCO_TRAIN_LABELS, COCO_ESCAPING: [18], COCO_MISSING: [18], COCO_GRAY: [18]}
    _write_annotations(root / "annotations" / "instances_train2017.json", images, labels)

    val_images = []
    for image_id in (201, 202, 203):
        name = f"{image_id:012d}.jpg"
        _colour_image(root / "val2017" / name, image_id)
        val_images.append({"id": image_id, "file_name": name, "width": 48, "height": 40})
    val_labels = {201: [1], 202: [18], 203: [17]}
    _write_annotations(root / "annotations" / "instances_val2017.json", val_images, val_labels)
    return root


def _colour_image(path: Path, seed: int, gray: bool = False) -> None:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)
    if gray:
        pixels[:] = pixels[..., :1]
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, quality=95)


def _write_annotations(path: Path, images: list[dict], labels: dict[int, list[int]]) -> None:
    annotations = [
        {"id": 100 * image + k, "image_id": image, "category_id": category, "bbox": [1, 1, 9, 9],
         "area": 81.0, "iscrowd": 0, "segmentation": [[1, 1, 10, 1, 10, 10]]}
        for image, categories in labels.items()
        for k, category in enumerate(categories)
    ]  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        json.dumps({"images": images, "annotations": annotations, "categories": COCO_CATEGORIES})
    )


# --- A real HTTP server on 127.0.0.1 -----------------------------------------------------------
# It serves images and the ways image URLs fail, for the internet datamodule tests instead of
# mocks: img2dataset really connects, times out, follows redirects and decodes what comes back.
# The server counts every request (by path) and every TCP connection, so a test can prove that
# a URL was never fetched.


@dataclass(frozen=True)
class Response:
    """What the server answers on one path."""

    status: int = 200
    body: bytes = b""
    content_type: str = "image/jpeg"
    location: str | None = None  # for redirects; "{port}" stands for the server's port
    delay: float = 0.0  # seconds to wait before answering (past the client's timeout)
    drip: float = 0.0  # seconds between 64-byte pieces of the body (each within the timeout)
    length: bool = True  # send Content-Length; False: the body ends when the connection does


class ImageServer:
    """``with ImageServer(routes) as server:`` serves ``routes`` on ``server.url(path)``.

    Unknown paths get a 404. Bounded: each connection times out after a few seconds and the
    serving thread is a daemon, stopped when the block exits.
    """

    def __init__(self, routes: dict[str, Response]) -> None:
        self.routes = routes
        self.requests: Counter[str] = Counter()
        self.connections = 0
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            timeout = 5  # a client that connects and says nothing is dropped

            def do_GET(self) -> None:
                with server._lock:
                    server.requests[self.path] += 1
                response = server.routes.get(self.path, Response(404, b"not found", "text/plain"))
                time.sleep(response.delay)
                try:
                    self.send_response(response.status)
                    self.send_header("Content-Type", response.content_type)
                    if response.length:
                        self.send_header("Content-Length", str(len(response.body)))
                    if response.location is not None:
                        self.send_header("Location", server.url(response.location))
                    self.end_headers()
                    if not response.drip:
                        self.wfile.write(response.body)
                    for start in range(0, len(response.body) if response.drip else 0, 64):
                        self.wfile.write(response.body[start : start + 64])
                        self.wfile.flush()
                        time.sleep(response.drip)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up waiting (the slow route): expected

            def log_message(self, format: str, *args: object) -> None:
                pass  # keep test output clean

        class Server(ThreadingHTTPServer):
            daemon_threads = True  # a sleeping handler must not hold up shutdown

            def verify_request(self, request, client_address) -> bool:  # type: ignore[override]
                with server._lock:
                    server.connections += 1
                return True

        self._httpd = Server(("127.0.0.1", 0), Handler)
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    def url(self, path: str) -> str:
        path = path.replace("{port}", str(self.port))
        return path if "://" in path else f"http://127.0.0.1:{self.port}{path}"

    def total_requests(self) -> int:
        with self._lock:
            return sum(self.requests.values())

    def __enter__(self) -> ImageServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)


# --- Callbacks that the processes a test starts load (``tests.helpers.NAME``) ------------------


class PreemptOnce(L.Callback):
    """Sends this process submitit's pre-emption signal after ``step`` steps, in a run that
    did not resume (so the requeued run goes on to the end); the run that resumes writes the
    step it resumed at to ``resumed_step`` in its run directory."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_start(self, trainer, *args) -> None:
        if trainer.ckpt_path is not None:
            (Path(trainer.default_root_dir) / "resumed_step").write_text(str(trainer.global_step))

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step == self.step and trainer.ckpt_path is None:
            os.kill(os.getpid(), submitit.JobEnvironment._usr_sig())


class FlipProbe(L.Callback):
    """Writes, per process, which images of each training batch the device augmentation
    flipped: ``flips-rank{R}.jsonl``, one ``[step, [flipped?, ...]]`` line per batch."""

    def __init__(self, dirpath: str) -> None:
        self.dirpath = Path(dirpath)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        flip = trainer.datamodule.augmentation.ops[0]  # kornia keeps its last draw in _params
        flipped = flip._params["batch_prob"].tolist()
        with (self.dirpath / f"flips-rank{trainer.global_rank}.jsonl").open("a") as log:
            log.write(json.dumps([trainer.global_step, flipped]) + "\n")


class StreamKeysProbe(L.Callback):
    """Writes, per process, the ``(epoch, index)`` keys of the images in each training batch,
    as that process's training stream made them: ``keys-rank{R}.jsonl``, a line per batch."""

    def __init__(self, dirpath: str) -> None:
        self.dirpath = Path(dirpath)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        stream = trainer.train_dataloader.dataset
        keys = stream.keys(trainer.datamodule.batches_trained - 1)  # counted as it arrived
        with (self.dirpath / f"keys-rank{trainer.global_rank}.jsonl").open("a") as log:
            log.write(json.dumps(keys) + "\n")


class StepFile(L.Callback):
    """Writes the optimizer step of every finished training batch to ``dirpath/step``
    (replaced whole, so a reader never sees half a number)."""

    def __init__(self, dirpath: str) -> None:
        self.dirpath = Path(dirpath)

    def on_train_batch_end(self, trainer, *args) -> None:
        temporary = self.dirpath / "step.tmp"
        temporary.write_text(str(trainer.global_step))
        os.replace(temporary, self.dirpath / "step")


def train_run(run_dir: Path, overrides: list[str]) -> dict:
    """Compose ``conf/config.yaml`` with ``overrides`` as ``@hydra.main`` would, and train it
    with ``colorizer.run.train`` into ``run_dir``; returns metrics.json's content."""
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    from colorizer.cli import CONFIG_DIR
    from colorizer.run import train

    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("config", overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(run_dir)
    HydraConfig.instance().set_config(cfg)
    try:
        return train(cfg)
    finally:
        HydraConfig.instance().cfg = None


def as_frame(pixels: np.ndarray) -> torch.Tensor:
    """An ``[H, W, 3]`` uint8 picture (scikit-image's sample photographs) as ``[3, H, W]``."""
    return torch.from_numpy(pixels).permute(2, 0, 1).contiguous()
