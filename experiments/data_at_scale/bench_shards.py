#!/usr/bin/env python
"""Folder + resized cache vs. prepared WebDataset shards, at scale, on this machine.

    .venv/bin/python experiments/data_at_scale/bench_shards.py            # 100,000 images
    .venv/bin/python experiments/data_at_scale/bench_shards.py --images 2000 --steps 60 \
        --out experiments/data_at_scale/trial_2000/bench.json

Phases, each a real command as users start it (``python -m colorizer.run`` /
``python -m colorizer.prepare``, default callbacks, CSV logger), all on the same images:

1. generate N small colour JPEGs (seeded gradients and shapes, 120-200 px, 1000 per
   sub-folder) into WORKDIR/photos (never into the repository);
2. folder cold: ``data=curated data.root=photos data.resized_cache=cache`` (builds the cache);
3. prepare: ``colorizer.prepare`` of the same folder, same image_size and fractions -> shards;
4. alternately: folder warm, shards, folder warm, shards (``data=shards data.root=shards``),
   so that the machine's drift shows as the spread between the two of each;
5. disk footprint of photos/, cache/ and shards/.

Each training run: wall seconds of the process, and from its metrics.json
``time_to_first_batch_s`` (datamodule creation -> first training batch: scan, cache, manifest)
and ``train_images_per_s`` (steady-state, the run's TrainingThroughput callback).
Writes bench.json (numbers, exact commands, machine) and prints a markdown table.
"""

from __future__ import annotations

import argparse
import colorsys
import contextlib
import datetime as dt
import importlib.metadata
import json
import multiprocessing
import os
import platform
import resource
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
PER_FOLDER = 1000  # images per sub-folder of photos/
SEED = 20240611


# ---------------------------------------------------------------- 1. image generation


def _colour(rng: np.random.Generator) -> np.ndarray:
    """A saturated random colour (so that no image is taken for grayscale and skipped)."""
    r, g, b = colorsys.hsv_to_rgb(rng.random(), rng.uniform(0.5, 1.0), rng.uniform(0.4, 1.0))
    return np.array([r, g, b], dtype=np.float32) * 255


def make_image(index: int) -> np.ndarray:
    """Image ``index``: HxWx3 uint8, a two-colour gradient with 3-7 coloured shapes and a
    little noise, from its own seeded RNG (the same every run)."""
    rng = np.random.default_rng([SEED, index])
    height, width = int(rng.integers(120, 201)), int(rng.integers(120, 201))
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    t = (np.cos(angle) * x / width + np.sin(angle) * y / height + 1) / 2  # in [0, 1]
    image = (1 - t)[..., None] * _colour(rng) + t[..., None] * _colour(rng)
    for _ in range(int(rng.integers(3, 8))):
        cy, cx = rng.uniform(0, height), rng.uniform(0, width)
        ry, rx = rng.uniform(8, height / 3), rng.uniform(8, width / 3)
        kind = rng.integers(3)
        if kind == 0:  # ellipse
            mask = ((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2 <= 1
        elif kind == 1:  # rectangle
            mask = (np.abs(y - cy) <= ry) & (np.abs(x - cx) <= rx)
        else:  # stripes inside a disc
            period = rng.uniform(4, 12)
            mask = (((y - cy) ** 2 + (x - cx) ** 2) <= ry * rx) & ((x + y) % period < period / 2)
        image[mask] = _colour(rng)
    image += rng.normal(0, 6, size=image.shape).astype(np.float32)
    return np.clip(image, 0, 255).astype(np.uint8)


def image_path(photos: Path, index: int) -> Path:
    return photos / f"d{index // PER_FOLDER:04d}" / f"img{index:07d}.jpg"


def _write_range(job: tuple[str, int, int]) -> int:
    from PIL import Image

    photos, start, stop = Path(job[0]), job[1], job[2]
    for index in range(start, stop):
        path = image_path(photos, index)
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(make_image(index)).save(path, format="JPEG", quality=90)
    return stop - start


def generate(photos: Path, count: int, processes: int, stats: dict) -> float:
    step = 250
    jobs = [(str(photos), first, min(first + step, count)) for first in range(0, count, step)]
    done = 0
    with measure(stats), multiprocessing.get_context("fork").Pool(processes) as pool:
        for made in pool.imap_unordered(_write_range, jobs):
            done += made
            if done % 10000 < step or done == count:
                print(f"  generated {done}/{count}", flush=True)
        pool.close()
        pool.join()  # reaped, so that their CPU time is counted
    return stats["wall_s"]


# ---------------------------------------------------------------- measuring


def _cpu_jiffies() -> tuple[int, int, int]:
    """The machine's (busy, steal, all) CPU time so far, in clock ticks (/proc/stat)."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    except (OSError, ValueError):
        return 0, 0, 0
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    steal = fields[7] if len(fields) > 7 else 0
    total = sum(fields[:8])  # guest time is already counted in user
    return total - idle - steal, steal, total


@contextlib.contextmanager
def measure(stats: dict):
    """Fill ``stats`` with the wall seconds of the block, the CPU seconds of this process's
    children that ended in it (a command and the workers it waited for), and the machine's
    other CPU use meanwhile: ``other_cpu_s`` = all busy CPU time of the machine minus ours.
    On a quiet machine it is near 0; a few seconds per minute of run are the VM's noise, more
    means another job shared the cores and the timings are not comparable."""
    tick = os.sysconf("SC_CLK_TCK")
    load_before = os.getloadavg()[0]
    own_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    self_before = resource.getrusage(resource.RUSAGE_SELF)
    busy_before, steal_before, _ = _cpu_jiffies()
    start = time.perf_counter()
    try:
        yield stats
    finally:
        wall = time.perf_counter() - start
        busy_after, steal_after, _ = _cpu_jiffies()
        own_after = resource.getrusage(resource.RUSAGE_CHILDREN)
        self_after = resource.getrusage(resource.RUSAGE_SELF)
        user = own_after.ru_utime - own_before.ru_utime
        system = own_after.ru_stime - own_before.ru_stime
        ours = (
            user
            + system
            + sum(
                getattr(self_after, key) - getattr(self_before, key)
                for key in ("ru_utime", "ru_stime")
            )
        )
        machine_busy = (busy_after - busy_before) / tick
        stats.update({
            "wall_s": round(wall, 2),
            "cpu_user_s": round(user, 1),
            "cpu_sys_s": round(system, 1),
            "other_cpu_s": round(max(machine_busy - ours, 0.0), 1),
            "steal_s": round((steal_after - steal_before) / tick, 1),
            "load_1min_before": round(load_before, 2),
            "load_1min_after": round(os.getloadavg()[0], 2),
        })  # fmt: skip


# ---------------------------------------------------------------- commands


class CommandFailed(RuntimeError):
    pass


def run_command(name: str, command: list[str], logs: Path, stats: dict) -> float:
    """Run ``command`` (cwd: the repository, as users do), its output to logs/NAME.{out,err};
    returns its wall seconds, with CPU and noise figures in ``stats`` (:func:`measure`).
    Raises CommandFailed with the tail of its stderr."""
    logs.mkdir(parents=True, exist_ok=True)
    out, err = logs / f"{name}.out", logs / f"{name}.err"
    print(f"  $ {shlex.join(command)}", flush=True)
    with measure(stats), open(out, "wb") as stdout, open(err, "wb") as stderr:
        code = subprocess.run(command, cwd=REPO, stdout=stdout, stderr=stderr).returncode
    seconds = stats["wall_s"]
    if code != 0:
        tail = "\n".join(err.read_text(errors="replace").splitlines()[-40:])
        raise CommandFailed(
            f"{name} failed (exit status {code}) after {seconds:.1f} s: {shlex.join(command)}\n"
            f"--- last lines of {err} ---\n{tail}"
        )
    return seconds


def train_run(name: str, data: list[str], args, workdir: Path) -> dict:
    run_dir = workdir / "runs" / name
    command = [
        args.python, "-m", "colorizer.run", "model=alpha", *data,
        f"data.image_size={args.image_size}", f"data.batch_size={args.batch_size}",
        "data.num_workers=2", "trainer.accelerator=cpu", f"trainer.max_steps={args.steps}",
        f"trainer.val_check_interval={args.steps}",  # validated once, at the end
        f"trainer.limit_val_batches={args.eval_batches}",
        f"trainer.limit_test_batches={args.eval_batches}",
        "logger=csv", f"hydra.run.dir={run_dir}",
    ]  # fmt: skip
    stats: dict = {}
    wall = run_command(name, command, workdir / "logs", stats)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    if metrics.get("global_step") != args.steps:
        raise CommandFailed(f"{name}: trained {metrics.get('global_step')} steps, not {args.steps}")
    result = {
        "name": name,
        "command": shlex.join(command),
        "wall_s": round(wall, 2),
        **{key: metrics.get(key) for key in (
            "time_to_first_batch_s", "train_images_per_s", "train_data_wait_fraction",
            "global_step", "val/psnr", "test/psnr",
        )},
        **stats,
    }  # fmt: skip
    print(f"    wall {wall:.1f} s, first batch {_num(result['time_to_first_batch_s'])} s, "
          f"{_num(result['train_images_per_s'])} images/s, other processes' CPU "
          f"{stats['other_cpu_s']:.1f} s", flush=True)  # fmt: skip
    return result


# ---------------------------------------------------------------- helpers


def disk_usage(folder: Path) -> dict:
    """Sum of file sizes and number of files below ``folder`` (a du of apparent sizes)."""
    total = files = 0
    for directory, _, names in os.walk(folder):
        for name in names:
            total += os.lstat(os.path.join(directory, name)).st_size
            files += 1
    return {"bytes": total, "files": files}


def machine() -> dict:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = None
    try:
        kb = Path("/proc/meminfo").read_text().split("MemTotal:")[1].split()[0]
        memory = round(int(kb) / 2**20, 1)
    except (OSError, IndexError, ValueError):
        pass
    versions = {}
    for package in ("torch", "lightning", "pillow", "torchvision", "numpy"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[package] = importlib.metadata.version(package)
    git = {}
    for key, cmd in (("commit", ["git", "rev-parse", "HEAD"]),
                     ("dirty_files", ["git", "status", "--porcelain"])):  # fmt: skip
        try:
            output = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True).stdout
            git[key] = output.strip() if key == "commit" else len(output.splitlines())
        except OSError:
            pass
    return {
        "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "cpu_model": model,
        "memory_gib": memory,
        "versions": versions,
        "git": git,
    }


def _num(value, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _mb(size: int) -> str:
    return f"{size / 1e6:,.1f} MB"


def table(report: dict) -> str:
    def cpu(entry: dict) -> str:
        return _num(entry["cpu_user_s"] + entry["cpu_sys_s"]) if "cpu_user_s" in entry else "-"

    gen = report["generate"]
    lines = [
        "| phase | wall s | CPU s | time to first batch s | train images/s | data wait "
        "| other CPU s |",
        "|---|---:|---:|---:|---:|---:|---:|",
        f"| generate {report['settings']['images']:,} JPEGs | {_num(gen['wall_s'])} | {cpu(gen)} "
        f"| | | | {_num(gen.get('other_cpu_s'))} |",
    ]
    runs = {run["name"]: run for run in report["runs"]}
    for name in ("folder_cold", "prepare", "folder_warm_1", "shards_1", "folder_warm_2",
                 "shards_2"):  # fmt: skip
        if name == "prepare":
            prep = report["prepare"]
            lines.append(f"| prepare (manifest: {_num(prep['manifest_seconds'])} s) | "
                         f"{_num(prep['wall_s'])} | {cpu(prep)} | | | | "
                         f"{_num(prep.get('other_cpu_s'))} |")  # fmt: skip
            continue
        run = runs[name]
        wait = run.get("train_data_wait_fraction")
        lines.append(
            f"| {name} | {_num(run['wall_s'])} | {cpu(run)} | "
            f"{_num(run['time_to_first_batch_s'])} | {_num(run['train_images_per_s'])} | "
            f"{'-' if wait is None else f'{wait:.0%}'} | {_num(run.get('other_cpu_s'))} |"
        )
    disk = report["disk"]
    lines += [
        "",
        "| folder | size | files |",
        "|---|---:|---:|",
        *(
            f"| {name}/ | {_mb(disk[name]['bytes'])} | {disk[name]['files']:,} |"
            for name in ("photos", "cache", "shards")
        ),  # fmt: skip
    ]
    return "\n".join(lines)


# ---------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=100_000, help="JPEGs to generate")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="where photos/, cache/, shards/, runs/ go (default: a new "
                             "tempfile.mkdtemp under /tmp)")  # fmt: skip
    parser.add_argument("--steps", type=int, default=300, help="training steps per run")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--fraction", type=float, default=0.01,
                        help="val_fraction and test_fraction (both)")  # fmt: skip
    parser.add_argument("--eval-batches", type=int, default=2,
                        help="limit_val_batches and limit_test_batches of every run")  # fmt: skip
    parser.add_argument("--out", type=Path, default=None,
                        help="bench.json path (default: next to this script, "
                             "bench_<N>img_<date>.json)")  # fmt: skip
    parser.add_argument("--keep", action="store_true", help="keep the workdir")
    parser.add_argument("--python", default=sys.executable, help="interpreter for colorizer")
    args = parser.parse_args()
    if args.workdir is None:
        workdir = Path(tempfile.mkdtemp(prefix="bench_shards_", dir="/tmp"))
    else:
        workdir = args.workdir.resolve()
        workdir.mkdir(parents=True, exist_ok=True)
    if workdir == REPO or REPO in workdir.parents:
        sys.exit(f"--workdir {workdir} is inside the repository: choose one outside it")
    photos, cache, shards = workdir / "photos", workdir / "cache", workdir / "shards"
    for folder in (photos, cache, shards, workdir / "runs"):
        if folder.exists() and any(folder.iterdir()):
            sys.exit(f"{folder} is not empty: use a fresh --workdir")
    stamp = dt.datetime.now().strftime("%Y-%m-%d_%H%M")
    out = args.out or (Path(__file__).parent / f"bench_{args.images}img_{stamp}.json")
    print(f"workdir: {workdir}\nbench.json: {out}", flush=True)

    report: dict = {
        "settings": {
            "images": args.images, "steps": args.steps, "image_size": args.image_size,
            "batch_size": args.batch_size, "val_fraction": args.fraction,
            "test_fraction": args.fraction, "eval_batches": args.eval_batches,
            "num_workers": 2, "model": "alpha", "workdir": str(workdir),
        },
        "machine": machine(),
        "runs": [],
    }  # fmt: skip
    started = time.perf_counter()
    fractions = [f"data.val_fraction={args.fraction}", f"data.test_fraction={args.fraction}"]
    folder = ["data=curated", f"data.root={photos}", *fractions]
    try:
        print(f"1. generating {args.images} JPEGs", flush=True)
        processes = min(2, os.cpu_count() or 1)
        report["generate"] = {"processes": processes}
        seconds = generate(photos, args.images, processes, report["generate"])
        print(f"  {seconds:.1f} s", flush=True)

        print("2. folder, cold resized cache", flush=True)
        report["runs"].append(
            train_run("folder_cold", [*folder, f"data.resized_cache={cache}"], args, workdir)
        )

        print("3. prepare shards", flush=True)
        command = [
            args.python, "-m", "colorizer.prepare", *folder, f"data.image_size={args.image_size}",
            f"output={shards}", f"hydra.run.dir={workdir / 'runs' / 'prepare'}",
        ]  # fmt: skip
        stats = {}
        wall = run_command("prepare", command, workdir / "logs", stats)
        manifest = json.loads((shards / "manifest.json").read_text())
        report["prepare"] = {
            "command": shlex.join(command),
            "wall_s": round(wall, 2),
            "manifest_seconds": manifest.get("seconds"),
            "images": manifest.get("images"),
            "bytes": manifest.get("bytes"),
            "side": manifest.get("side"),
            "splits": {s: v.get("images") for s, v in manifest.get("splits", {}).items()},
            "shards": sum(len(v.get("shards", [])) for v in manifest.get("splits", {}).values()),
            "skipped": manifest.get("skipped"),
            **stats,
        }
        print(f"    wall {wall:.1f} s, {manifest.get('images')} images, "
              f"{_mb(manifest.get('bytes', 0))}", flush=True)  # fmt: skip

        print("4. warm folder / shards, alternating", flush=True)
        for repeat in (1, 2):
            report["runs"].append(train_run(
                f"folder_warm_{repeat}", [*folder, f"data.resized_cache={cache}"], args, workdir
            ))  # fmt: skip
            report["runs"].append(train_run(
                f"shards_{repeat}", ["data=shards", f"data.root={shards}"], args, workdir
            ))  # fmt: skip

        print("5. disk", flush=True)
        report["disk"] = {
            name: disk_usage(workdir / name) for name in ("photos", "cache", "shards")
        }
    except CommandFailed as error:
        report["error"] = str(error)
        _write(out, report)
        print(f"\nFAILED: {error}\nworkdir kept: {workdir}\npartial bench.json: {out}",
              file=sys.stderr)  # fmt: skip
        sys.exit(1)
    report["total_seconds"] = round(time.perf_counter() - started, 1)
    # A phase is noisy when other processes took more than 10 % of the machine meanwhile.
    phases = [("generate", report["generate"]), ("prepare", report["prepare"])]
    phases += [(run["name"], run) for run in report["runs"]]
    cores = os.cpu_count() or 1
    report["noisy_phases"] = [
        name for name, entry in phases if entry["other_cpu_s"] > 0.1 * entry["wall_s"] * cores
    ]
    report["table"] = table(report)
    if report["noisy_phases"]:
        report["table"] += (
            "\n\nNoisy (other processes used > 10 % of the CPUs meanwhile): "
            + ", ".join(report["noisy_phases"])
        )
    _write(out, report)
    print("\n" + report["table"] + f"\n\ntotal {report['total_seconds']:.0f} s; bench.json: {out}")
    if args.keep:
        print(f"workdir kept: {workdir}")
    else:
        shutil.rmtree(workdir)


def _write(path: Path, report: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
