"""JPEG decoders on one core: python decoders.py PHOTOS_DIR [OUT.json]

The workers decode the resized cache's copies; torchvision 0.29 deprecates its decoders in
favour of TorchCodec. Per image, best of 3 passes over the folder's JPEGs, one thread each:
the full-size photographs, and 217² copies (the cache's size for 128² training) written as the
cache writes them (4:4:4, quality 95). Checks that TorchCodec and torchvision decode to the same
pixels.
"""

from __future__ import annotations

import io
import json
import sys
import time
import warnings
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image
from torchcodec.decoders import decode_jpeg as torchcodec_decode
from torchvision.io import ImageReadMode
from torchvision.io import decode_jpeg as torchvision_decode


def per_image_ms(decode, items: list) -> float:
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for item in items:
            decode(item)
        best = min(best, (time.perf_counter() - start) / len(items))
    return best * 1000


def small_copy(path: Path) -> bytes:
    image = Image.open(path).convert("RGB")
    image.thumbnail((217, 217))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=95, subsampling=0)
    return buffer.getvalue()


def main(photos: str, out: str | None) -> None:
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    warnings.filterwarnings("ignore", "The image decoding and encoding capabilities")
    files = sorted(Path(photos).rglob("*.jpg"))
    result = {"photos": len(files), "torch": torch.__version__}
    for label, data in (("full", [f.read_bytes() for f in files]),
                        ("copy_217", [small_copy(f) for f in files])):  # fmt: skip
        tensors = [torch.frombuffer(bytearray(d), dtype=torch.uint8) for d in data]
        result[f"{label}_torchvision_ms"] = per_image_ms(
            lambda t: torchvision_decode(t, mode=ImageReadMode.RGB), tensors
        )
        result[f"{label}_torchcodec_ms"] = per_image_ms(
            lambda t: torchcodec_decode(t, mode="RGB"), tensors
        )
        result[f"{label}_pil_ms"] = per_image_ms(
            lambda d: np.asarray(Image.open(io.BytesIO(d)).convert("RGB")), data
        )
        result[f"{label}_opencv_ms"] = per_image_ms(
            lambda d: cv2.imdecode(np.frombuffer(d, np.uint8), cv2.IMREAD_COLOR_RGB), data
        )
        result[f"{label}_same_pixels"] = all(
            torch.equal(torchvision_decode(t, mode=ImageReadMode.RGB), torchcodec_decode(t))
            for t in tensors
        )
    print(json.dumps(result, indent=2))
    if out:
        Path(out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else None)
