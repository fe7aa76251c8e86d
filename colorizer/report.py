"""What every application writes when it ends: a JSON file of its results, optionally a
``report.md``, and the same table on the console (run, evaluate, colorize, bench, videos)."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table


def cell(value: Any, digits: int = 4) -> str:
    """A number for a table: ``digits`` decimals, ``-`` when missing or not finite."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


@dataclass
class ResultTable:
    """A table of results, printed on the console and written into report.md alike.

    ``header[0]`` heads the row labels; every other column is right-aligned (numbers).
    """

    title: str
    header: Sequence[str]
    rows: list[Sequence[str]] = field(default_factory=list)
    caption: str | None = None

    def add_row(self, *cells: str) -> None:
        self.rows.append(cells)

    def rich(self) -> Table:
        table = Table(title=self.title, caption=self.caption)
        for i, column in enumerate(self.header):
            table.add_column(column, justify="right" if i else "left")
        for row in self.rows:
            table.add_row(*row)
        return table

    def markdown(self) -> list[str]:
        """The table's Markdown lines (title and caption are the report's to place)."""
        return [
            "| " + " | ".join(self.header) + " |",
            "|---|" + "---:|" * (len(self.header) - 1),
            *("| " + " | ".join(row) + " |" for row in self.rows),
        ]


def markdown_report(heading: str, intro: str, table: ResultTable, notes: Iterable[str]) -> str:
    """report.md: a heading, one paragraph on what was measured, the table, then notes
    (definitions, what was skipped), each a paragraph."""
    lines = [f"# {heading}", "", intro, "", *table.markdown()]
    for note in notes:
        if note:
            lines += ["", note]
    return "\n".join(lines) + "\n"


def write_report(
    run_dir: Path,
    results: dict[str, Any],
    *,
    json_name: str = "metrics.json",
    table: ResultTable | Sequence[ResultTable] | None = None,
    markdown: str | None = None,
    lines: Iterable[str] = (),
    also_wrote: Iterable[Path] = (),
    console: Console | None = None,
) -> list[Path]:
    """Write ``results`` as ``run_dir/json_name`` (and ``markdown`` as report.md), then print
    ``table`` (or tables), ``lines`` and one ``Wrote PATH`` line per file (``also_wrote``: files the
    application wrote itself). Returns the files listed."""
    run_dir.mkdir(parents=True, exist_ok=True)
    written = [run_dir / json_name]
    written[0].write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    if markdown is not None:
        written.append(run_dir / "report.md")
        written[-1].write_text(markdown)
    written += list(also_wrote)
    console = console or Console()
    for each in [table] if isinstance(table, ResultTable) else table or []:
        console.print(each.rich())
    for line in [*lines, *(f"Wrote {path}" for path in written)]:
        console.print(line, markup=False, highlight=False, soft_wrap=True)
    return written
