"""Colorization quality against the number of hints, as Zhang et al. (2017) measure it:
``python -m colorizer.evaluate ckpt_path=X hints=0,1,2,5,10,20,50,100``.

For each count N, every image gets N points revealing its truth (``colorizer.hints.truth_hints``,
seeded by the evaluation's seed and the image's position, so every model sees the same ones),
and the prediction is scored with the usual metrics. Results: ``<split>/hintsN_psnr``, ...,
a table and ``hints.png`` (PSNR against the number of points, the gray baseline for scale).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from omegaconf import ListConfig

from colorizer.color import merge_lab, split_lab
from colorizer.errors import ConfigError
from colorizer.hints import truth_hints
from colorizer.metrics import colorization_metrics, computed_or_nan, update_metrics
from colorizer.models import ColorizationModule
from colorizer.report import ResultTable, cell


def hint_counts(value: Any) -> list[int]:
    """The ``hints=`` option: a list of point counts (>= 0), or none."""
    if value is None:
        return []
    values = list(value) if isinstance(value, ListConfig | list | tuple) else [value]
    if not values or any(isinstance(v, bool) or not isinstance(v, int) or v < 0 for v in values):
        raise ConfigError(f"hints={value} must be point counts >= 0, e.g. hints=[0,1,2,5,10,20]")
    return sorted(set(values))


HINT_DEFINITION = (
    "Points: N per image, centres uniform, square patches of side uniform in 1-9 px, each "
    "the truth's mean ab; drawn from the evaluation's seed and the image's position, so every "
    "model sees the same points."
)


class HintCurve:
    """Metrics of one model at each number of hints, accumulated batch by batch."""

    def __init__(self, counts: list[int], split: str, seed: int, device: torch.device):
        self.counts, self.split, self.seed = counts, split, seed
        self.metrics = {n: colorization_metrics().to(device) for n in counts}
        self.images = 0

    def check(self, model: ColorizationModule) -> None:
        if self.counts and not model.spec.hints:
            raise ConfigError(
                f"hints={self.counts}: model={model.spec.name} takes no hints; evaluate a "
                "model trained with model.hints=true, or leave hints unset"
            )

    @torch.no_grad()
    def update(self, model: ColorizationModule, batch: torch.Tensor) -> None:
        """Score uint8 ``[B, 3, H, W]`` at every count (the images numbered on from the last)."""
        l_norm, ab_norm = split_lab(batch)
        truth = batch.float() / 255.0
        for count, metrics in self.metrics.items():
            seeds = [self._seed(self.images + i, count) for i in range(batch.shape[0])]
            points = truth_hints(ab_norm, count, seeds)
            prediction = merge_lab(l_norm, model.predict_ab(l_norm, points))
            update_metrics(metrics, prediction, truth)
        self.images += batch.shape[0]

    def _seed(self, image: int, count: int) -> int:
        return (self.seed * 1_000_003 + image) * 1_009 + count

    def results(self) -> dict[str, float]:
        return {
            f"{self.split}/hints{count}_{name}": computed_or_nan(metric)
            for count, metrics in self.metrics.items()
            for name, metric in metrics.items()
        }


def hint_table(summary: dict[str, Any], counts: list[int]) -> ResultTable:
    """PSNR and ΔCF at each number of hints, with the gray baseline's."""
    split = summary["split"]
    table = ResultTable(
        f"{summary['model']} with hints revealed from the truth ({split})",
        ["points", "PSNR (dB)", "SSIM", "ΔCF"],
    )
    for count in counts:
        key = f"{split}/hints{count}_"
        table.add_row(
            str(count), cell(summary[f"{key}psnr"]), cell(summary[f"{key}ssim"]),
            cell(summary[f"{key}delta_cf"]),
        )  # fmt: skip
    gray = f"{split}/gray_"
    table.add_row(
        "gray baseline", cell(summary[f"{gray}psnr"]), cell(summary[f"{gray}ssim"]),
        cell(summary[f"{gray}delta_cf"]),
    )  # fmt: skip
    return table


def hint_section(table: ResultTable) -> str:
    """report.md's part on hints: the table, how points are drawn, the plot."""
    lines = ["", "## With hints", "", *table.markdown(), "", HINT_DEFINITION, ""]
    return "\n".join([*lines, "![PSNR against points](hints.png)"]) + "\n"


def plot_hint_curve(summary: dict[str, Any], counts: list[int], path: Path) -> None:
    """hints.png: PSNR against the number of points (symmetric-log axis: 0 is shown), and
    the gray baseline."""
    import matplotlib  # deferred: only this plot needs it

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    split = summary["split"]
    psnr = [summary[f"{split}/hints{count}_psnr"] for count in counts]
    figure, axes = plt.subplots(figsize=(6, 4), dpi=100)
    axes.plot(counts, psnr, marker="o", label=f"{summary['model']}")
    axes.axhline(summary[f"{split}/gray_psnr"], color="gray", linestyle="--", label="gray")
    axes.set_xscale("symlog", linthresh=1)
    axes.set_xlim(-0.3, max(1, max(counts)) * 1.3)
    axes.set_xticks(counts, [str(count) for count in counts])
    axes.minorticks_off()
    axes.set_xlabel("points revealed per image")
    axes.set_ylabel("PSNR (dB)")
    axes.set_title(
        f"{summary['model']} on {summary['data']} ({split}), {summary['num_images']} images"
    )
    axes.grid(True, alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
