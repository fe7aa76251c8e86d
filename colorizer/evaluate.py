"""A checkpoint against the gray baseline: ``python -m colorizer.evaluate ckpt_path=X data=...``.

Writes to the run directory (``hydra.run.dir``): ``metrics.json`` (``<split>/psnr``, ...,
``<split>/gray_psnr``, ..., the names training uses), ``report.md`` (model vs gray baseline)
and ``samples.png`` (gray | prediction | truth rows). The metrics are the README's
(Metrics section), computed by the same code as training's test step, so ``split=test``
reproduces a run's ``test/*``.

Sizes: by default each image goes through the data's evaluation transform (shorter side to
``data.image_size``, centre crop), which leaves images of exactly that size untouched.
``native=true`` evaluates each image at its own size; images of equal size share a batch, so
a folder of same-size images runs at ``batch_size`` and a mixed one in smaller batches.

``videos=PATH`` evaluates colour videos instead: PSNR and flicker (warping error) per frame,
with ``temporal=flow`` and for the gray baseline (``colorizer.video_eval``).
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any
from unittest import mock

import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig
from rich.console import Console
from rich.table import Table
from torch.utils.data import DataLoader, Dataset
from torchmetrics import Metric, MetricCollection
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity
from torchvision.models import AlexNet_Weights
from torchvision.transforms import v2
from torchvision.utils import save_image

from colorizer.callbacks import triplet_grid
from colorizer.cli import run_app
from colorizer.console import image_progress
from colorizer.data.base import DataError, ImageDataModule, ImageFileDataset
from colorizer.data.images import format_reasons, format_summary, list_image_files, scan_images
from colorizer.errors import ConfigError, require_int
from colorizer.inference import resolve_device
from colorizer.metrics import colorization_metrics, update_metrics
from colorizer.models import load_model
from colorizer.registry import DATA_SOURCES, MODELS
from colorizer.video_eval import evaluate_videos

log = logging.getLogger(__name__)

SPLITS = ("test", "val", "train", "all")
STAGES = {"test": "test", "val": "validate", "train": "fit"}
COLUMNS = {"psnr": "PSNR (dB)", "mse": "MSE", "ssim": "SSIM", "cf": "CF", "delta_cf": "ΔCF"}
COLUMNS |= {"fid": "FID", "lpips": "LPIPS"}
DEFINITIONS = (
    "sRGB in [0, 1]; PSNR (data_range 1) per image, then averaged over images; MSE over all "
    "pixels; SSIM on [0, 1]; CF: Hasler-Süsstrunk colourfulness on 0-255, per image, averaged; "
    "ΔCF = |mean CF(prediction) - mean CF(truth)|; gray baseline: the same images with ab = 0."
)


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Score ``cfg.ckpt_path`` on ``cfg.split`` of ``cfg.data`` (or on ``cfg.videos``); returns
    metrics.json's content."""
    if cfg.get("videos") is not None:
        return evaluate_videos(cfg)
    split = str(cfg.split)
    if split not in SPLITS:
        raise ConfigError(f"split={split} is not one of: {', '.join(SPLITS)}")
    require_int("batch_size", cfg.batch_size)
    device = resolve_device(str(cfg.device))
    L.seed_everything(cfg.seed, verbose=False)
    model = load_model(cfg.ckpt_path).to(device)
    datamodule = datamodule_as_trained(cfg)
    dataset = eval_dataset(datamodule, split, native=bool(cfg.native))
    loader = DataLoader(
        dataset,
        batch_size=cfg.batch_size,
        num_workers=datamodule.num_workers,
        collate_fn=stack_by_size,
        pin_memory=device.type == "cuda",
    )
    extra, skipped = perceptual_metrics()
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
                need = cfg.num_images_in_grid - len(grid_rows)
                if need > 0 and (not grid_rows or triplets.shape[1:] == grid_rows[0].shape):
                    grid_rows.extend(triplets[:need].cpu())
                num_images += batch.shape[0]
                bar.advance(task, batch.shape[0])
        scores = [
            (f"{split}/{key}", m) for s in (model_scores, gray_scores) for key, m in s.items()
        ]
        values = {key: _compute(metric) for key, metric in scores}
    summary: dict[str, Any] = {
        "model": MODELS.name_or_fail(model),
        "checkpoint": str(Path(cfg.ckpt_path).resolve()),
        "data": DATA_SOURCES.name_or_fail(datamodule),
        "split": split,
        "image_size": "native" if cfg.native else datamodule.image_size,
        "num_images": num_images,
        "device": str(device),
        "skipped_metrics": skipped,
        **values,
    }
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    written = [output_dir / "metrics.json", output_dir / "report.md"]
    written[0].write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    written[1].write_text(report(summary))
    if isinstance(dataset, ImageFileDataset):  # which images were scored, one path a line
        written.append(output_dir / "images.txt")
        written[-1].write_text("".join(f"{path}\n" for path in dataset.paths))
    if grid_rows:
        written.append(output_dir / "samples.png")
        save_image(triplet_grid(torch.stack(grid_rows)), written[-1])
    header, rows = _table(summary)
    table = Table(title=f"{summary['data']}, split {split}", caption=DEFINITIONS)
    for i, column in enumerate(header):
        table.add_column(column, justify="right" if i else "left")
    for row in rows:
        table.add_row(*row)
    console.print(
        table, *([skipped] if skipped else []), *(f"Wrote {p}" for p in written), sep="\n"
    )
    return summary


def datamodule_as_trained(cfg: DictConfig) -> ImageDataModule:
    """``cfg.data``, splitting its images as the checkpoint's training run did.

    A split is a function of settings such as ``seed`` and the fractions, and evaluate.yaml's
    defaults need not be the run's (``experiment=gan_coco`` trains with seed 123): scored
    with other settings, a "test" split would hold images the model trained on. So when the
    checkpoint's run read the same images, its split settings are used; one given explicitly
    on the command line that differs is refused.
    """
    datamodule: ImageDataModule = instantiate(cfg.data)
    if cfg.split == "all":
        return datamodule
    checkpoint = torch.load(cfg.ckpt_path, map_location="cpu", weights_only=True, mmap=True)
    trained = checkpoint.get("datamodule_hyper_parameters")
    if not trained:
        log.warning("%s does not record its training data: check that data.seed and the "
                    "split fractions are the training run's", cfg.ckpt_path)  # fmt: skip
        return datamodule
    differences = datamodule.split_differences(trained)
    if differences is None:
        log.info("other data than the checkpoint was trained on: its own split settings")
        return datamodule
    given = {override.split("=")[0].lstrip("+~") for override in _task_overrides()}
    for key, value in differences.items():
        for name in (f"data.{key}", *(["seed"] if key == "seed" else [])):
            if name in given:
                raise ConfigError(
                    f"{name}={datamodule.hparams[key]} splits the images otherwise than the "
                    f"checkpoint, trained with data.{key}={value}: split={cfg.split} would score "
                    f"images it trained on; drop {name}= to use the run's split, or use split=all"
                )
    if differences:
        settings = ", ".join(f"data.{key}={value}" for key, value in differences.items())
        log.info("split as the checkpoint's training run did: %s", settings)
        datamodule = instantiate(cfg.data, **differences)
    return datamodule


def _task_overrides() -> list[str]:
    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def eval_dataset(datamodule: ImageDataModule, split: str, *, native: bool) -> Dataset:
    """The images of ``split`` (``all``: every usable image under ``data.root``), uncropped
    at random: items are uint8 ``[3, H, W]``, at ``data.image_size`` unless ``native``."""
    if split == "all":
        files = _scan_root(datamodule)
        dataset: Dataset = ImageFileDataset(files, v2.Identity(), min_size=datamodule.min_size)
    else:
        datamodule.prepare_data()
        datamodule.setup(STAGES[split])
        dataset = getattr(datamodule, f"{split}_set")
    if isinstance(dataset, ImageFileDataset):
        # Training sets crop at random: evaluation must see the same pixels every time.
        dataset.transform = v2.Identity() if native else datamodule.eval_transform()
        dataset.decode_size = None if native else datamodule.image_size
    return dataset


def _scan_root(datamodule: ImageDataModule) -> list[Path]:
    """Every usable image file under ``data.root``, validated once, with no split."""
    root = getattr(datamodule, "root", None)
    if root is None:
        raise ConfigError("split=all evaluates every image under data.root: set data.root=DIR")
    if not Path(root).is_dir():
        raise DataError(f"data.root={root} is not a folder: point it at a folder of images")
    files = list_image_files(root)
    exclude_gray = getattr(datamodule, "exclude_grayscale", True)
    result = scan_images(files, min_size=datamodule.min_size, exclude_grayscale=exclude_gray)
    level = logging.WARNING if result.rejected else logging.INFO
    log.log(level, "%s", format_summary("all", len(files), result))
    if not result.paths:
        why = format_reasons(result.skipped) or "no image files"
        raise DataError(f"data.root={root} has no usable colour image ({why}): fix data.root")
    return result.paths


def stack_by_size(images: list[torch.Tensor]) -> list[torch.Tensor]:
    """Collate uint8 ``[3, H, W]`` items into one ``[B, 3, H, W]`` batch per distinct size."""
    groups: dict[tuple[int, ...], list[torch.Tensor]] = {}
    for image in images:
        groups.setdefault(tuple(image.shape), []).append(image)
    return [torch.stack(group) for group in groups.values()]


class PairedFID(FrechetInceptionDistance):
    """FID of predictions vs their truths, with the ``update(preds, target)`` of the others."""

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:  # type: ignore[override]
        super().update(target, real=True)
        super().update(preds, real=False)


def perceptual_metrics() -> tuple[dict[str, Metric], str | None]:
    """FID and LPIPS if their packages and weights (torch hub cache) are here; never downloads.

    Returns the metrics built, and one line naming those skipped and why (None if none was).
    They are built with torch.hub's downloader disabled, in case a check here is wrong.
    """
    metrics: dict[str, Metric] = {}
    why_not = []
    for name, build in (("FID", _fid), ("LPIPS", _lpips)):
        try:
            with mock.patch("torch.hub.download_url_to_file", side_effect=_no_download):
                metrics[name.lower()] = build()
        except ImportError as err:
            why_not.append(f"{name}: package {err.name or err} is not installed")
        except Exception as err:  # noqa: BLE001 - whatever fails to load is not available
            why_not.append(f"{name}: {err}")
    if not why_not:
        return metrics, None
    names = ", ".join(line.split(":")[0] for line in why_not)
    return metrics, f"{names}: skipped (weights not available locally: {'; '.join(why_not)})"


def _fid() -> Metric:
    from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3

    _require_cached(URL_INCEPTION_V3)
    return PairedFID(normalize=True)


def _lpips() -> Metric:
    _require_cached(AlexNet_Weights.DEFAULT.url)  # the default backbone's ImageNet weights
    return LearnedPerceptualImagePatchSimilarity(net_type="alex", normalize=True)


def _require_cached(url: str) -> None:
    """Raise FileNotFoundError unless torch.hub has already downloaded ``url``."""
    path = Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name
    if not path.is_file():
        raise FileNotFoundError(f"no {path.name} in {path.parent}")


def _no_download(url: str, *args: Any, **kwargs: Any) -> None:
    raise FileNotFoundError(f"{url} is not downloaded")


def _collection(prefix: str, extra: dict[str, Metric]) -> MetricCollection:
    collection = colorization_metrics()
    collection.add_metrics({name: metric.clone() for name, metric in extra.items()})
    return collection.clone(prefix=prefix)


def _compute(metric: Metric) -> float:
    try:
        return float(metric.compute())
    except (RuntimeError, ValueError):  # e.g. FID of fewer than two images
        return math.nan


def report(summary: dict[str, Any]) -> str:
    """report.md: the model vs gray baseline table, the metric definitions, what was skipped."""
    header, rows = _table(summary)
    size = summary["image_size"]
    lines = [
        f"# {summary['model']} vs gray baseline: {summary['data']}, split {summary['split']}",
        "",
        f"Checkpoint `{summary['checkpoint']}`; images at "
        + ("their native size." if size == "native" else f"{size} x {size} px."),
        "",
        "| " + " | ".join(header) + " |",
        "|---|" + "---:|" * (len(header) - 1),
        *("| " + " | ".join(row) + " |" for row in rows),
        "",
        DEFINITIONS,
    ]
    if summary["skipped_metrics"]:
        lines += ["", summary["skipped_metrics"]]
    return "\n".join(lines) + "\n"


def _table(summary: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Header and rows (model, gray baseline) of the report's table."""
    split = summary["split"]
    names = [name for name in COLUMNS if f"{split}/{name}" in summary]
    header = ["", *(COLUMNS[name] for name in names), "images"]
    rows = [
        [label, *(_cell(summary[f"{split}/{prefix}{name}"]) for name in names)]
        + [str(summary["num_images"])]
        for label, prefix in ((f"model ({summary['model']})", ""), ("gray baseline", "gray_"))
    ]
    return header, rows


def _cell(value: float) -> str:
    return "-" if not math.isfinite(value) else f"{value:.4f}"


def main() -> None:
    run_app(evaluate, config_name="evaluate")


if __name__ == "__main__":
    main()
