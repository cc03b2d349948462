"""Typing that holds for users: `mypy --strict` accepts ordinary code using ferroloop, and a
wrong use is caught (so the check has teeth). The package itself and stubtest run in `make lint`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("mypy", reason="mypy is not installed (make venv installs it)")

HERE = Path(__file__).resolve().parent / "typecheck"


def mypy_strict(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", str(path)],
        cwd=path.parent,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_ordinary_user_code_passes_mypy_strict():
    done = mypy_strict(HERE / "user_code.py")
    assert done.returncode == 0, done.stdout + done.stderr


def test_a_wrong_use_is_reported(tmp_path):
    wrong = tmp_path / "wrong.py"
    wrong.write_text(
        "import asyncio\nimport ferroloop\n\n"
        "async def main() -> int:\n    return 1\n\n"
        "def f() -> None:\n"
        "    loop = ferroloop.Loop()\n"
        "    loop.call_soon(print, 1, 2, end=3)\n"  # no keyword arguments for the callback
        "    text: str = ferroloop.run(main())\n"  # run returns the coroutine's type
    )
    done = mypy_strict(wrong)
    assert done.returncode == 1, done.stdout
    assert "wrong.py:9" in done.stdout and "wrong.py:10" in done.stdout, done.stdout
