"""What every benchmark reports: rows of sidecar-vs-baseline figures and their targets."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results"


@dataclass
class Row:
    """One figure of the sidecar, its same-run baseline and the target it is held to."""

    bench: str
    metric: str
    value: float | None
    unit: str
    baseline: float | None = None
    baseline_label: str = ""
    #: How the ratio reads: `value / baseline`, unless `inverse` (baseline / value).
    inverse: bool = False
    target: str = ""
    passed: bool | None = None
    note: str = ""

    @property
    def ratio(self) -> float | None:
        if self.value is None or self.baseline is None or not self.baseline or not self.value:
            return None
        return self.baseline / self.value if self.inverse else self.value / self.baseline

    @property
    def result(self) -> str:
        if self.passed is None:
            return ""
        return "PASS" if self.passed else "MISS"

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["ratio"] = self.ratio
        data["result"] = self.result
        return data


@dataclass
class Context:
    """Options of the run, and what benchmarks leave for the report besides rows."""

    quick: bool = False
    soak: float = 600.0
    profile: bool = False
    uvloop: bool = False
    notes: list[str] = field(default_factory=list)
    profiles: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def seconds(self, full: float, quick: float) -> float:
        return quick if self.quick else full

    def note(self, text: str) -> None:
        print(f"  note: {text}", flush=True)
        self.notes.append(text)

    def profile_path(self, label: str) -> Path:
        return RESULTS / f"profile-{label}.txt"


def fmt(value: float | None, unit: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if unit in {"req/s", "events/s"}:
        return f"{value:,.0f} {unit}"
    if unit == "ms":
        return f"{value:,.2f} ms" if value < 100 else f"{value:,.0f} ms"
    if unit == "MiB":
        return f"{value:,.1f} MiB"
    if unit in {"%", "% core"}:
        return f"{value:,.2f} {unit}"
    if unit == "us":
        return f"{value:,.1f} us"
    if unit == "x":
        return f"{value:,.2f}x"
    return f"{value:,.3g} {unit}".strip()


def ratio_text(row: Row) -> str:
    ratio = row.ratio
    if ratio is None:
        return "-"
    if ratio < 0.1:
        return f"1/{1 / ratio:,.0f}"
    return f"{ratio:.2f}x"


HEADERS = ("benchmark", "metric", "sidecar", "baseline", "ratio", "target", "result")


def table_cells(rows: list[Row]) -> list[tuple[str, ...]]:
    cells: list[tuple[str, ...]] = []
    for row in rows:
        baseline = fmt(row.baseline, row.unit)
        if row.baseline is not None and row.baseline_label:
            baseline = f"{baseline} ({row.baseline_label})"
        cells.append(
            (
                row.bench,
                row.metric,
                fmt(row.value, row.unit),
                baseline if row.baseline is not None else "-",
                ratio_text(row),
                row.target or "-",
                row.result or "-",
            )
        )
    return cells


def text_table(rows: list[Row]) -> str:
    cells = [HEADERS, *table_cells(rows)]
    widths = [max(len(line[i]) for line in cells) for i in range(len(HEADERS))]
    out = []
    for index, line in enumerate(cells):
        out.append("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(line)).rstrip())
        if index == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def markdown_table(rows: list[Row]) -> str:
    lines = ["| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
    for line in table_cells(rows):
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in line) + " |")
    return "\n".join(lines)


def row_notes(rows: list[Row]) -> list[str]:
    return [f"{row.bench} / {row.metric}: {row.note}" for row in rows if row.note]
