"""The results as one chart: each loop's speed relative to the baseline (uvloop), per workload.

For each workload the chart takes one figure: the server's CPU time per request where the
workload has it (the fair efficiency figure of the network workloads, whose throughput is often
bounded by the load generator), else its first metric (callbacks/s, spawns/s, ...).  Every bar
is "times as fast as the baseline", higher is better: a rate's ratio as measured, a cost's ratio
inverted (0.5x the CPU per request is 2x as fast).

Drawn with matplotlib (the ``chart`` extra: ``pip install 'ferroloop[chart]'``); the file's
extension picks the format (``.svg``, ``.png``, ``.pdf``).  Used by ``python -m ferroloop bench
--chart PATH``, and, to redraw a saved markdown report, by
``python -m ferroloop.bench.chart REPORT.md PATH``.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from .registry import NON_LOOPS

if TYPE_CHECKING:
    from .runner import Results

#: The metric preferred where a workload has it.
PREFERRED_KEY = "server_us"
PREFERRED_LABEL = "server CPU/request"
#: Loops in the order bars are drawn, and their colours (others get matplotlib's).
COLOURS = {
    "asyncio": "#9e9e9e",
    "uvloop": "#4f7cac",
    "ferroloop": "#d9534f",
    "rloop": "#8e6c8a",
    "ferroloop-metrics": "#f0ad4e",
    "ferroloop-base": "#e6a5a3",
}


@dataclass
class Row:
    """One workload of the chart: its title, the figure used, and each loop's speed-up."""

    title: str
    figure: str
    speedups: dict[str, float] = field(default_factory=dict)


class ChartUnavailable(RuntimeError):
    """matplotlib is not installed."""


def rows_from_results(results: Results) -> tuple[list[Row], str]:
    """The chart's rows from a run's :class:`~.runner.Results`, and the baseline's name."""
    plan = results.plan
    loops = [c.name for c in plan.contestants if c.available and c.name not in NON_LOOPS]
    rows = []
    for workload in plan.workloads:
        metric = next((m for m in workload.metrics if m.key == PREFERRED_KEY), workload.primary)
        row = Row(workload.title, f"{metric.label} {'↑' if metric.better == 'higher' else '↓'}")
        for loop in loops:
            ratio = 1.0 if loop == plan.baseline else results.ratio(workload.name, loop, metric)
            if ratio:
                row.speedups[loop] = ratio if metric.better == "higher" else 1 / ratio
        if row.speedups:
            rows.append(row)
    return rows, plan.baseline or ""


_RATIO = re.compile(r"\(([0-9.]+)×\)")


def rows_from_markdown(text: str) -> tuple[list[Row], str]:
    """The chart's rows from a markdown report written by ``python -m ferroloop bench``."""
    baseline_match = re.search(r"ratios to \*\*([\w-]+)\*\*", text)
    baseline = baseline_match.group(1) if baseline_match else "uvloop"
    lines = iter(text.splitlines())
    header: list[str] = []
    for line in lines:
        if line.startswith("| workload | metric |"):
            header = [cell.strip() for cell in line.strip("|").split("|")]
            break
    loops = [name for name in header[2:] if name not in NON_LOOPS]
    chosen: dict[str, tuple[str, list[str]]] = {}
    for line in lines:
        if not line.startswith("|"):
            if chosen:
                break
            continue
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        if len(cells) != len(header) or set(cells[0]) <= {"-", ":"}:
            continue
        title, figure = cells[0], cells[1]
        if title not in chosen or figure.startswith(PREFERRED_LABEL):
            chosen[title] = (figure, cells[2:])
    rows = []
    for title, (figure, cells) in chosen.items():
        row = Row(title, figure)
        higher = "↑" in figure
        for loop, cell in zip(header[2:], cells, strict=True):
            if loop not in loops or cell in ("", "–", "-"):
                continue
            found = _RATIO.search(cell)
            ratio = float(found.group(1)) if found else 1.0 if loop == baseline else None
            if ratio:
                row.speedups[loop] = ratio if higher else 1 / ratio
        if row.speedups:
            rows.append(row)
    return rows, baseline


def draw(rows: list[Row], baseline: str, path: Path, subtitle: str = "") -> None:
    """Draw ``rows`` as grouped horizontal bars into ``path`` (format from its extension)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        # Text stays text in an SVG (small, searchable), and the file is the same every time.
        matplotlib.rcParams["svg.fonttype"] = "none"
        matplotlib.rcParams["svg.hashsalt"] = "ferroloop"
    except ImportError as exc:
        raise ChartUnavailable(
            "the chart needs matplotlib: pip install 'ferroloop[chart]'"
        ) from exc
    loops = sorted(
        {loop for row in rows for loop in row.speedups},
        key=lambda name: (list(COLOURS).index(name) if name in COLOURS else len(COLOURS), name),
    )
    height = 0.8 / max(len(loops), 1)
    figure, axes = plt.subplots(figsize=(9, 0.36 * len(rows) * max(len(loops), 2) / 2 + 1.2))
    axes.set_ylim(len(rows) - 0.5, -0.5)
    for index, loop in enumerate(loops):
        positions = [
            r - 0.4 + height * (index + 0.5) for r, row in enumerate(rows) if loop in row.speedups
        ]
        values = [row.speedups[loop] for row in rows if loop in row.speedups]
        axes.barh(positions, values, height=height, label=loop, color=COLOURS.get(loop))
    axes.set_yticks(range(len(rows)))
    axes.set_yticklabels([f"{row.title}\n{row.figure}" for row in rows], fontsize=7)
    axes.axvline(1.0, color="black", linewidth=0.8)
    axes.set_xlabel(f"times as fast as {baseline} (higher is better)")
    title = "ferroloop benchmarks"
    axes.set_title(f"{title}\n{subtitle}" if subtitle else title, fontsize=10)
    axes.legend(loc="lower right", fontsize=8)
    axes.grid(axis="x", linewidth=0.3)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, metadata={"Date": None} if path.suffix == ".svg" else None)
    plt.close(figure)


def main(argv: list[str] | None = None) -> int:
    """``python -m ferroloop.bench.chart REPORT.md OUT.svg``: redraw a saved report."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m ferroloop.bench.chart REPORT.md OUT.(svg|png)", file=sys.stderr)
        return 2
    text = Path(args[0]).read_text(encoding="utf-8")
    rows, baseline = rows_from_markdown(text)
    if not rows:
        print(f"no results table in {args[0]}", file=sys.stderr)
        return 1
    stamp = re.search(r"\| date \| ([^|]+) \|", text)
    python = re.search(r"\| Python \| ([^|]+) \|", text)
    subtitle = ", ".join(m.group(1).strip() for m in (stamp, python) if m)
    try:
        draw(rows, baseline, Path(args[1]), subtitle)
    except ChartUnavailable as exc:
        print(exc, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
