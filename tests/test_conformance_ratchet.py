"""The conformance ratchet as a pytest test: CPython's test_asyncio tests that are known to pass
on ferroloop (tests/conformance/ratchet.txt) must still pass.

It runs ``tests/conformance/run.py --check-ratchet`` over the modules named in the ratchet, in a
subprocess (the runner starts one child process per test module). Deselect it with
``pytest -m "not conformance"``; it is skipped if ferroloop is not importable.
"""

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.conformance

CONFORMANCE_DIR = Path(__file__).resolve().parent / "conformance"
RATCHET_FILE = CONFORMANCE_DIR / "ratchet.txt"
# The default ratchet run takes well under a minute; leave room for a few hung tests (60 s each).
TIMEOUT_SECONDS = 20 * 60


def ratchet_modules() -> list[str]:
    """The test modules that have at least one id in the ratchet and exist in this Python's suite
    (run.py reports the ids of the others as absent in this Python)."""
    try:
        spec = importlib.util.find_spec("test.test_asyncio")
    except ModuleNotFoundError:  # an interpreter packaged without its test suite
        spec = None
    suite_dirs = [Path(d) for d in spec.submodule_search_locations] if spec else []
    modules = set()
    for line in RATCHET_FILE.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            # test.test_asyncio.<module>.<Class>.<method>
            modules.add(line.split(".")[2])
    return sorted(m for m in modules if any((d / f"{m}.py").exists() for d in suite_dirs))


def test_conformance_ratchet():
    pytest.importorskip("ferroloop", reason="ferroloop is not built/installed")
    modules = ratchet_modules()
    if not modules:
        pytest.skip("the ratchet is empty, or none of its modules is in this Python's suite")
    proc = subprocess.run(
        [
            sys.executable,
            str(CONFORMANCE_DIR / "run.py"),
            "--loop",
            "ferroloop",
            "--check-ratchet",
            "--modules",
            ",".join(modules),
        ],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_SECONDS,
        check=False,
    )
    # On failure show the end of the report: the summary table and the ratchet verdict.
    report = proc.stdout[-12000:] + (f"\nstderr:\n{proc.stderr[-4000:]}" if proc.stderr else "")
    assert proc.returncode == 0, f"conformance ratchet failed:\n{report}"
