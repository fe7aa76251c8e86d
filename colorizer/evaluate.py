"""A checkpoint against the gray baseline: ``python -m colorizer.evaluate ckpt_path=X data=...``.

Writes to the run directory (``hydra.run.dir``): ``metrics.json`` (``<split>/psnr``, ...,
``<split>/gray_psnr``, ..., the names training uses), ``report.md`` (model vs gray baseline)
and ``samples.png`` (gray | prediction | truth rows). The metrics are the README's
(Metrics section), computed by the same code as training's test step, so ``split=test``
reproduces a run's ``test/*``; the images are the checkpoint's own split
(``colorizer.data.evaluation``).

Sizes: by default each image goes through the data's evaluation transform (shorter side to
``size``, centre crop), which leaves images of exactly that size untouched; ``size`` defaults
to the size the checkpoint was trained at. ``native=true`` evaluates each image at its own
size; images of equal size share a batch, so a folder of same-size images runs at
``batch_size`` and a mixed one in smaller batches.

``videos=PATH`` evaluates colour videos instead: PSNR and flicker (warping error) per frame,
with ``temporal=flow`` and for the gray baseline (``colorizer.video_eval``).
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig
from PIL import Image
from rich.console import Console

from colorizer.callbacks import triplet_grid
from colorizer.cli import run_app
from colorizer.console import image_progress
from colorizer.data.base import ImageFileDataset
from colorizer.data.evaluation import SPLITS, datamodule_as_trained, eval_dataset, stack_by_size
from colorizer.data.loaders import image_loader
from colorizer.errors import ConfigError, require_int
from colorizer.hint_eval import (
    HintCurve,
    hint_counts,
    hint_section,
    hint_table,
    plot_hint_curve,
)
from colorizer.inference import resolve_device
from colorizer.metrics import (
    METRIC_COLUMNS,
    METRIC_DEFINITIONS,
    colorization_metrics,
    computed_or_nan,
    perceptual_metrics,
    update_metrics,
)
from colorizer.models import load_model, read_checkpoint
from colorizer.models.spec import check_size_option
from colorizer.registry import DATA_SOURCES, MODELS
from colorizer.report import ResultTable, cell, markdown_report, write_report
from colorizer.video_eval import evaluate_videos


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Score ``cfg.ckpt_path`` on ``cfg.split`` of ``cfg.data`` (or on ``cfg.videos``); returns
    metrics.json's content."""
    if cfg.get("videos") is not None:
        return evaluate_videos(cfg)
    split = str(cfg.split)
    if split not in SPLITS:
        raise ConfigError(f"split={split} is not one of: {', '.join(SPLITS)}")
    require_int("batch_size", cfg.batch_size)
    check_size_option("size", cfg.size)
    counts = hint_counts(cfg.get("hints"))
    device = resolve_device(str(cfg.device))
    L.seed_everything(cfg.seed, verbose=False)
    model = load_model(cfg.ckpt_path).to(device)
    curve = HintCurve(counts, split, cfg.seed, device)
    curve.check(model)
    checkpoint = read_checkpoint(cfg.ckpt_path, mmap=True)
    build = functools.partial(instantiate, cfg.data, image_size=model.spec.working_size(cfg.size))
    datamodule = datamodule_as_trained(
        build, checkpoint.get("datamodule_hyper_parameters"), split, _given_keys(),
        where=str(cfg.ckpt_path),
    )  # fmt: skip
    dataset = eval_dataset(datamodule, split, native=bool(cfg.native))
    loader = image_loader(dataset, batch_size=cfg.batch_size, num_workers=datamodule.num_workers,
                          device=device, collate_fn=stack_by_size)  # fmt: skip
    extra, skipped = perceptual_metrics(cfg.get("fid_weights"))
    model_scores, gray_scores = (_collection(p, extra).to(device) for p in ("", "gray_"))
    grid_rows: list[torch.Tensor] = []
    num_images = 0
    console = Console()
    bar = image_progress(console)
    with torch.inference_mode(), bar:
        task = bar.add_task(f"evaluating {split}", total=len(dataset))  # type: ignore[arg-type]
        for batches in loader:
            for batch in batches:
                # The test step's computation: true L + predicted ab, and ab = 0, vs the truth.
                triplets = model.sample_triplets(batch.to(device))
                gray, prediction, truth = (images.contiguous() for images in triplets.unbind(1))
                update_metrics(model_scores, prediction, truth)
                update_metrics(gray_scores, gray, truth)
                curve.update(model, batch.to(device))
                need = cfg.num_images_in_grid - len(grid_rows)
                if need > 0 and (not grid_rows or triplets.shape[1:] == grid_rows[0].shape):
                    grid_rows.extend(triplets[:need].cpu())
                num_images += batch.shape[0]
                bar.advance(task, batch.shape[0])
        scores = [
            (f"{split}/{key}", m) for s in (model_scores, gray_scores) for key, m in s.items()
        ]
        values = {key: computed_or_nan(metric) for key, metric in scores} | curve.results()
    summary: dict[str, Any] = {
        "model": MODELS.name_or_fail(model),
        "checkpoint": str(Path(cfg.ckpt_path).resolve()),
        "data": DATA_SOURCES.name_or_fail(datamodule),
        "split": split,
        "image_size": "native" if cfg.native else datamodule.image_size,
        "num_images": num_images,
        "device": str(device),
        "skipped_metrics": skipped,
        "hint_counts": counts,
        **values,
    }
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    extra_files = []
    if isinstance(dataset, ImageFileDataset):  # which images were scored, one path a line
        extra_files.append(output_dir / "images.txt")
        extra_files[-1].write_text("".join(f"{path}\n" for path in dataset.paths))
    if grid_rows:
        extra_files.append(output_dir / "samples.png")
        Image.fromarray(triplet_grid(torch.stack(grid_rows))).save(extra_files[-1])
    table = score_table(summary)
    markdown, tables = report(summary, table), [table]
    if counts:
        extra_files.append(output_dir / "hints.png")
        plot_hint_curve(summary, counts, extra_files[-1])
        tables.append(hint_table(summary, counts))
        markdown += hint_section(tables[-1])
    write_report(
        output_dir, summary, table=tables, markdown=markdown,
        lines=[skipped] if skipped else [], also_wrote=extra_files, console=console,
    )  # fmt: skip
    return summary


def _given_keys() -> set[str]:
    """The keys set on the command line (``data.seed=3`` -> ``data.seed``)."""
    overrides = HydraConfig.get().overrides.task if HydraConfig.initialized() else []
    return {override.split("=")[0].lstrip("+~") for override in overrides}


def _collection(prefix: str, extra: dict) -> Any:
    collection = colorization_metrics()
    collection.add_metrics({name: metric.clone() for name, metric in extra.items()})
    return collection.clone(prefix=prefix)


def score_table(summary: dict[str, Any]) -> ResultTable:
    """The model and the gray baseline, one row each, every metric computed."""
    split = summary["split"]
    names = [name for name in METRIC_COLUMNS if f"{split}/{name}" in summary]
    table = ResultTable(
        f"{summary['data']}, split {split}",
        ["", *(METRIC_COLUMNS[name] for name in names), "images"],
        caption=METRIC_DEFINITIONS,
    )
    for label, prefix in ((f"model ({summary['model']})", ""), ("gray baseline", "gray_")):
        values = (cell(summary[f"{split}/{prefix}{name}"]) for name in names)
        table.add_row(label, *values, str(summary["num_images"]))
    return table


def report(summary: dict[str, Any], table: ResultTable) -> str:
    """report.md: the model vs gray baseline table, the metric definitions, what was skipped."""
    size = summary["image_size"]
    where = "their native size." if size == "native" else f"{size} x {size} px."
    return markdown_report(
        f"{summary['model']} vs gray baseline: {summary['data']}, split {summary['split']}",
        f"Checkpoint `{summary['checkpoint']}`; images at {where}",
        table,
        [METRIC_DEFINITIONS, summary["skipped_metrics"] or ""],
    )


def main() -> None:
    # hints=0,1,2 is a list of counts here; Hydra would read a bare comma list as a sweep.
    sys.argv = [_as_list(arg, "hints=") for arg in sys.argv]
    run_app(evaluate, config_name="evaluate")


def _as_list(arg: str, prefix: str) -> str:
    value = arg.removeprefix(prefix)
    if arg.startswith(prefix) and "," in value and not value.startswith("["):
        return f"{prefix}[{value}]"
    return arg


if __name__ == "__main__":
    main()
