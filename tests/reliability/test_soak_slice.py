"""A short slice of the leak soak (``make soak``) for every test run: on ferroloop, no scenario
of benchmarks/soak.py may leave file descriptors or GC-tracked objects behind per unit.

RSS is left to ``make soak``: at a fifth of the batch size one page of noise is over its limit.
GC objects may grow by 0.01 per unit (3.14+ keeps one object per batch of this slice's
sampling); every leak this test was written against left 0.2 to 21 per unit.
"""

import subprocess
import sys
from pathlib import Path

SOAK = Path(__file__).resolve().parents[2] / "benchmarks" / "soak.py"


def test_no_scenario_leaks_fds_or_objects():
    proc = subprocess.run(
        [
            sys.executable,
            str(SOAK),
            "--check",
            "--loops",
            "ferroloop",
            "--scale",
            "0.2",
            "--rounds",
            "2",
            "--timeout",
            "120",
            "--max-rss-kib",
            "1e12",
            "--max-gc-objects",
            "100",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "error" not in proc.stdout, proc.stdout
