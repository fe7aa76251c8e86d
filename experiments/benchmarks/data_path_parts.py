"""Where the CPU data path's time goes, part by part: python data_path_parts.py [PHOTOS] [OUT.json]

On a folder of photos (default: the embedded ones), at 256² with the resized cache:
- ``lab_ms``: uint8 batch -> Lab (``colorizer.color.rgb_to_lab``) per image, one thread;
  ``kornia_lab_ms`` the same through kornia's float formula, for comparison;
- ``decode_ms``: one cached copy decoded by the workers' decoder (TorchCodec), per image;
- ``item_ms``: a training item (decode, seeded random crop), per image, one thread;
- ``loader_images_per_s_main_threads_{1,2}``: 2 workers decoding, Lab batched in the main
  process with 1 or 2 threads (the whole path, as ``colorizer.bench`` measures it).
Medians of 5 timings each.
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import kornia.color
import torch
from torchcodec.decoders import decode_jpeg

from colorizer.color import rgb_to_lab
from colorizer.data.curated import CuratedDataModule

SIZE, BATCH, LOADER_BATCHES = 256, 8, 60


def per_call_ms(function, calls: int) -> float:
    function()
    timings = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(calls):
            function()
        timings.append((time.perf_counter() - start) / calls * 1000)
    return statistics.median(timings)


def loader_rate(module: CuratedDataModule, threads: int) -> float:
    torch.set_num_threads(threads)
    batches = iter(module.train_dataloader())
    for _ in range(3):
        rgb_to_lab(next(batches))
    rates = []
    for _ in range(5):
        start, images = time.perf_counter(), 0
        for _ in range(LOADER_BATCHES // 5):
            batch = next(batches)
            rgb_to_lab(batch)
            images += batch.shape[0]
        rates.append(images / (time.perf_counter() - start))
    return statistics.median(rates)


def main(photos: str | None, out: str | None) -> None:
    with tempfile.TemporaryDirectory() as cache:
        # Decoding is measured: no decoded image kept in memory (memory_cache_mb=0).
        module = CuratedDataModule(
            photos, image_size=SIZE, batch_size=BATCH, num_workers=2, resized_cache=cache,
            memory_cache_mb=0,
        )  # fmt: skip
        module.setup("fit")
        dataset = module.train_set
        copies = dataset.paths
        torch.set_num_threads(1)
        batch = torch.stack([dataset[(0, i % len(copies))] for i in range(BATCH)])
        data = [torch.frombuffer(bytearray(p.read_bytes()), dtype=torch.uint8) for p in copies]
        result = {
            "photos": photos or "embedded",
            "copies": len(copies),
            "copy_pixels_median": statistics.median(
                decode_jpeg(d, mode="RGB")[0].numel() for d in data
            ),
            "lab_ms": per_call_ms(lambda: rgb_to_lab(batch), 20) / BATCH,
            "kornia_lab_ms": per_call_ms(lambda: kornia.color.rgb_to_lab(batch.float() / 255), 20)
            / BATCH,  # fmt: skip
            "decode_ms": per_call_ms(lambda: [decode_jpeg(d, mode="RGB") for d in data], 5)
            / len(data),  # fmt: skip
            "item_ms": per_call_ms(lambda: [dataset[(1, i % len(copies))] for i in range(BATCH)], 5)
            / BATCH,  # fmt: skip
            "loader_images_per_s_main_threads_1": loader_rate(module, 1),
            "loader_images_per_s_main_threads_2": loader_rate(module, 2),
            "torch": torch.__version__,
        }
    print(json.dumps(result, indent=2))
    if out:
        Path(out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else None, sys.argv[2] if len(sys.argv) > 2 else None)
