"""The suite's own safety nets in tests/conftest.py actually catch problems.

Runs a small pytest session in a subprocess, with a copy of conftest.py, on
the asyncio param only (the mechanics do not depend on the loop).
"""

import os
import re
import shutil
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

INNER_TESTS = """
def test_unexpected_handler_call(loop):
    loop.call_soon(lambda: 1 / 0)
    loop.call_soon(loop.stop)
    loop.run_forever()


def test_expected_handler_call(loop, expect_exception_handler):
    loop.call_soon(lambda: 1 / 0)
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert len(expect_exception_handler) == 1
    assert isinstance(expect_exception_handler[0]["exception"], ZeroDivisionError)


def test_no_handler_call(loop):
    loop.call_soon(loop.stop)
    loop.run_forever()


def test_idle_loop_times_out(loop):
    loop.call_later(60, loop.stop)
    loop.run_forever()


def test_spinning_loop_times_out(loop):
    def spin():
        loop.call_soon(spin)

    loop.call_soon(spin)
    loop.run_forever()
"""


def test_conftest_safety_nets(tmp_path):
    shutil.copy(Path(__file__).with_name("conftest.py"), tmp_path / "conftest.py")
    (tmp_path / "test_inner.py").write_text(INNER_TESTS)
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rA", "-k", "asyncio"],
        cwd=tmp_path,
        env={**os.environ, "FERROLOOP_TEST_TIMEOUT": "1"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    out = proc.stdout
    outcomes = defaultdict(set)
    for outcome, name in re.findall(
        r"^(PASSED|FAILED|ERROR) test_inner\.py::(\w+)\[asyncio\]", out, re.M
    ):
        outcomes[name].add(outcome)
    assert dict(outcomes) == {
        "test_unexpected_handler_call": {"PASSED", "ERROR"},  # error at teardown
        "test_expected_handler_call": {"PASSED"},
        "test_no_handler_call": {"PASSED"},
        "test_idle_loop_times_out": {"FAILED"},
        "test_spinning_loop_times_out": {"FAILED"},
    }, out
    assert "loop exception handler was called unexpectedly 1 time(s)" in out
    assert "ZeroDivisionError" in out
    # Both time-outs are reported as such (pytest prints each message once in the traceback
    # and, untruncated when CI is set, again in the summary: count the tracebacks' lines).
    timeouts = re.findall(
        r"^E\s+conftest\.TestTimeout: test exceeded its time limit of 1 s", out, re.M
    )
    assert len(timeouts) == 2, out
    assert proc.returncode == 1
