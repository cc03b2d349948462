"""A fixed set of the fuzzer's seeds (tests/fuzz/fuzz_loop.py; ``make fuzz`` runs many more).

Each seed runs in its own interpreter on ferroloop, then on stdlib asyncio; a crash, a hang,
a panic, an exception of a type asyncio never raises there, or a deterministic outcome that
differs from asyncio's fails the seed. The fuzzer compares with asyncio itself, so this test
has no ``loop`` fixture.
"""

import os
import subprocess
import sys

import pytest

FUZZER = os.path.join(os.path.dirname(__file__), "fuzz", "fuzz_loop.py")
SEEDS = 20
STEPS = 80


def test_fixed_seeds_find_nothing():
    pytest.importorskip("ferroloop")
    args = ["--start", "0", "--count", str(SEEDS), "--jobs", "2", "--steps", str(STEPS)]
    proc = subprocess.run(
        [sys.executable, FUZZER, *args, "--timeout", "60"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-20000:] + proc.stderr[-5000:]
    assert f"ran {SEEDS} seeds (0..{SEEDS - 1}); 0 failed" in proc.stdout, proc.stdout
