"""Starting benchmark child processes and collecting their JSON results.

A child runs ``_child.py MODULE FUNCTION JSON-KWARGS``: it imports ``ferroloop.bench.MODULE``,
calls ``FUNCTION(**kwargs)`` and prints the returned dict as one JSON line on stdout.  Exceptions
are turned into ``{"status": "unsupported" | "error", "detail": ...}`` by the child itself, so a
non-zero exit status means the process crashed (or was killed).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

#: The script children run; its package directory is the ferroloop the children import.
CHILD_SCRIPT = Path(__file__).with_name("_child.py")


@contextlib.contextmanager
def snapshot_package() -> Iterator[Path]:
    """Make children run from a copy of the ferroloop package taken now.

    While ferroloop is developed, ``maturin develop`` may rebuild it in place in the middle of a
    run; benchmarking a copy keeps every round on the same build.
    """
    global CHILD_SCRIPT
    original = CHILD_SCRIPT
    with tempfile.TemporaryDirectory(prefix="ferroloop-bench-") as tmp:
        copy = Path(tmp) / "ferroloop"
        shutil.copytree(original.parent.parent, copy, ignore=shutil.ignore_patterns("__pycache__"))
        CHILD_SCRIPT = copy / "bench" / "_child.py"
        try:
            yield copy
        finally:
            CHILD_SCRIPT = original


class ChildFailed(RuntimeError):
    """A child process crashed, timed out or printed no result."""


def command(module: str, function: str, kwargs: dict[str, Any]) -> list[str]:
    """The argv that runs ``ferroloop.bench.<module>.<function>(**kwargs)`` in a child."""
    return [sys.executable, str(CHILD_SCRIPT), module, function, json.dumps(kwargs)]


def start(
    module: str, function: str, kwargs: dict[str, Any], stderr: IO[bytes] | None = None
) -> subprocess.Popen[str]:
    """Start a child whose stdout is a text pipe (for protocols of several JSON lines)."""
    return start_argv(command(module, function, kwargs), stderr)


def start_argv(argv: list[str], stderr: IO[bytes] | None = None) -> subprocess.Popen[str]:
    """Start any program (a Python child or e.g. the floor server) with stdout a text pipe."""
    return subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
        env=_child_env(),
    )


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("PYTHONHASHSEED", "0")
    return env


def describe_exit(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit status {returncode}"


def tail(stream: IO[bytes] | None, limit: int = 600) -> str:
    """The last ``limit`` characters written to a temporary stderr file."""
    if stream is None:
        return ""
    stream.flush()
    stream.seek(0)
    text = stream.read().decode("utf-8", "replace").strip()
    return text[-limit:]


def parse_result(stdout: str) -> dict[str, Any] | None:
    """The last JSON object line of ``stdout``, or None."""
    for line in reversed(stdout.splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                return json.loads(line)
            except ValueError:
                continue
    return None


def run_child(module: str, function: str, kwargs: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Run a child to completion and return its result dict.

    Raises :class:`ChildFailed` if it crashes, times out or prints no result.
    """
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(
            command(module, function, kwargs),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            env=_child_env(),
        )
        try:
            stdout, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise ChildFailed(f"timed out after {timeout:.0f} s; stderr: {tail(err)}") from None
        result = parse_result(stdout)
        if proc.returncode != 0 or result is None:
            why = describe_exit(proc.returncode) if proc.returncode else "no result"
            raise ChildFailed(f"{why}; stderr: {tail(err)}")
        return result
