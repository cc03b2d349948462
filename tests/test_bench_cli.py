"""``python -m ferroloop bench`` as a user runs it: a run keeps what it measured (saved as it
goes, printed when interrupted) and survives its package being removed or replaced under it.

Tiny runs (one micro workload, asyncio and ferroloop, one round): a few seconds each.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ferroloop = pytest.importorskip("ferroloop", reason="ferroloop is not importable")

TIMEOUT = 120
TINY = ["--only", "call_soon,sleep0", "--loops", "asyncio,ferroloop", "--rounds", "1"]


def bench(*args, env=None):
    return subprocess.Popen(
        [sys.executable, "-m", "ferroloop", "bench", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def wait_for_line(proc, text):
    """Read the run's stderr up to the first line containing ``text``; the lines read."""
    lines = []
    for line in proc.stderr:
        lines.append(line)
        if text in line:
            return lines
    raise AssertionError(f"{text!r} never came; stderr: {''.join(lines)}")


def finish(proc):
    try:
        out, err = proc.communicate(timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return out, err


def test_results_are_saved_as_they_are_measured(tmp_path):
    output = tmp_path / "report.md"
    raw = tmp_path / "raw.json"
    proc = bench(*TINY, "--output", str(output), "--json", str(raw))
    wait_for_line(proc, "callbacks/s")  # the first measurement is done (and saved)
    first_partial = (tmp_path / "report.md.partial").read_text()
    assert "| call_soon |" in first_partial
    assert (tmp_path / "raw.json.partial").is_file()
    out, err = finish(proc)
    assert proc.returncode == 0, err
    assert "| sleep(0) yields |" in output.read_text()
    assert raw.is_file()
    assert not (tmp_path / "report.md.partial").exists()  # replaced by the final files
    assert "| sleep(0) yields |" in out


def test_an_interrupted_run_prints_what_it_measured(tmp_path):
    proc = bench(*TINY, "--output", str(tmp_path / "report.md"))
    wait_for_line(proc, "callbacks/s")
    proc.send_signal(signal.SIGINT)
    out, err = finish(proc)
    assert proc.returncode == 130, err
    assert "| call_soon | callbacks/s" in out
    assert "| call_soon |" in (tmp_path / "report.md.partial").read_text()


def test_a_run_survives_its_package_being_removed(tmp_path):
    """`make test` (maturin develop) or pip replacing the installed package during a long run
    must not take the run down: its children run from a copy, its parent imported everything."""
    install = tmp_path / "site"
    shutil.copytree(
        Path(ferroloop.__file__).parent,
        install / "ferroloop",
        ignore=shutil.ignore_patterns("__pycache__", "target"),
    )
    env = dict(os.environ, PYTHONPATH=str(install))
    proc = bench(*TINY, env=env)
    lines = wait_for_line(proc, "benchmarking a copy of ferroloop")
    assert str(install) not in "".join(lines)  # not the installed package: its copy
    wait_for_line(proc, "callbacks/s")
    shutil.rmtree(install / "ferroloop")  # the installed package is gone
    out, err = finish(proc)
    assert proc.returncode == 0, err
    assert "| call_soon |" in out and "| sleep(0) yields |" in out
    assert "reinstalled during the run" in err


def test_the_short_run_is_the_default_and_full_is_one_flag_away():
    from ferroloop.bench import cli

    parser = __import__("argparse").ArgumentParser()
    cli.add_arguments(parser)
    assert cli._settings(parser.parse_args([])).quick is True
    assert cli._settings(parser.parse_args(["--full"])).quick is False


def test_chart_rows_from_a_saved_report():
    from ferroloop.bench import chart

    report = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"
    rows, baseline = chart.rows_from_markdown(report.read_text(encoding="utf-8"))
    assert baseline == "uvloop"
    by_title = {row.title: row for row in rows}
    call_soon = by_title["call_soon"]
    assert call_soon.figure == "callbacks/s ↑"
    assert call_soon.speedups["uvloop"] == 1.0
    assert call_soon.speedups["ferroloop"] > 1 > call_soon.speedups["asyncio"]
    echo = by_title["echo Protocol 1 KiB"]
    assert echo.figure == "server CPU/request ↓"  # the fair figure where the client is the limit
    assert "floor" not in echo.speedups  # not a loop


def test_chart_is_drawn(tmp_path):
    pytest.importorskip("matplotlib")
    from ferroloop.bench import chart

    rows = [chart.Row("call_soon", "callbacks/s ↑", {"uvloop": 1.0, "ferroloop": 2.5})]
    chart.draw(rows, "uvloop", tmp_path / "chart.svg", "subtitle")
    svg = (tmp_path / "chart.svg").read_text()
    assert "<svg" in svg and "call_soon" in svg and "ferroloop" in svg
