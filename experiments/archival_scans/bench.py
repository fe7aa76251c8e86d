"""Peak memory and speed of ``colorizer.colorize`` on large synthetic gray scans (issue 29).

    python experiments/archival_scans/bench.py CKPT [--megapixels 25 100 400] [--dir DIR]
        [--format jpg|png|tif|webp]

Each scan (a gray 8-bit JPEG, square, with a ramp, soft shapes and grain) is written to a
temporary folder (never kept), colorized alone by ``python -m colorizer.colorize`` in a
child process under ``/usr/bin/time -v``; its peak RSS and wall time are printed as a row.
``num_workers=0``: one process decodes, colorizes and writes, so its peak is the run's.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image


def write_scan(path: Path, side: int, seed: int = 0) -> None:
    """A ``side x side`` gray JPEG (quality 90) with grain, built in row blocks."""
    rng = np.random.default_rng(seed)
    gray = np.empty((side, side), np.uint8)
    cols = np.arange(side) / side
    for top in range(0, side, 1024):
        rows = np.arange(top, min(top + 1024, side))[:, None] / side
        shapes = 0.25 * np.sin(7 * rows) * np.cos(5 * cols) + 0.5 * (rows + cols) / 2
        grain = rng.integers(-6, 7, size=(len(rows), side))
        gray[top : top + len(rows)] = np.clip(40 + 170 * shapes + grain, 0, 255)
    Image.fromarray(gray).save(path, quality=90)


def measure(ckpt: str, scan: Path, out: Path, fmt: str) -> tuple[float, float]:
    """(peak RSS in MiB, wall seconds) of colorizing ``scan`` in a child process."""
    command = ["/usr/bin/time", "-v", sys.executable, "-m", "colorizer.colorize",
               f"ckpt_path={ckpt}", f"input={scan}", f"output={out}", "num_workers=0",
               "batch_size=1", "device=cpu", f"format={fmt}",
               f"hydra.run.dir={out}/run"]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    peak_kib = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", result.stderr)[1])
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)", result.stderr)[
        1
    ]
    seconds = sum(float(part) * 60**i for i, part in enumerate(reversed(wall.split(":"))))
    return peak_kib / 1024, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ckpt")
    parser.add_argument("--megapixels", type=int, nargs="+", default=[25, 100, 400])
    parser.add_argument("--dir", default=None, help="where the temporary scans go")
    parser.add_argument("--format", default="jpg", help="the output format (colorize format=)")
    args = parser.parse_args()
    print("| megapixels | JPEG MB | peak RSS MiB | seconds | MP/s |")
    print("|---:|---:|---:|---:|---:|")
    for megapixels in args.megapixels:
        with tempfile.TemporaryDirectory(dir=args.dir) as folder:
            side = round((megapixels * 1e6) ** 0.5)
            scan = Path(folder) / f"scan_{megapixels}mp.jpg"
            write_scan(scan, side)
            peak, seconds = measure(args.ckpt, scan, Path(folder) / "out", args.format)
            size = scan.stat().st_size / 1e6
            rate = side * side / 1e6 / seconds
            print(f"| {megapixels} | {size:.1f} | {peak:.0f} | {seconds:.1f} | {rate:.2f} |",
                  flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
