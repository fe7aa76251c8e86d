"""Markdown tables of bench results: python table.py DIR (DIR/NAME/bench.json or DIR/NAME.json)."""

import json
import sys
from pathlib import Path

TRAIN = ("train_images_per_s", "plain_images_per_s", "lightning_overhead", "infer_images_per_s")
DATA = ("data_images_per_s", "data_workers_images_per_s", "data_uncached_images_per_s",
        "reference_data_images_per_s", "data_speedup")  # fmt: skip


def cell(value: object) -> str:
    return f"{value:.2f}" if isinstance(value, float) else str(value)


def main(out: Path) -> None:
    results = {p.parent.name: json.loads(p.read_text()) for p in sorted(out.glob("*/bench.json"))}
    results |= {p.stem: json.loads(p.read_text()) for p in sorted(out.glob("*.json"))}
    for columns in (TRAIN, DATA):
        print("| run | size, batch | " + " | ".join(columns) + " |")
        print("|---|---|" + "---:|" * len(columns))
        for name, r in results.items():
            values = " | ".join(cell(r.get(key)) for key in columns)
            print(f"| {name} | {r['image_size']}², {r['batch_size']} | {values} |")
        print()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
