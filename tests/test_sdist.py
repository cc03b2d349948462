"""The source distribution builds and installs on a machine with only Rust and Python (slow:
one release build, several minutes; deselected by default, run by ``make test-sdist``)."""

from __future__ import annotations

import os
import subprocess
import sys
import venv
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
MATURIN = Path(sys.executable).with_name("maturin")


def run(*argv, **kwargs):
    done = subprocess.run(
        [str(a) for a in argv], capture_output=True, text=True, timeout=1800, **kwargs
    )
    assert done.returncode == 0, f"{argv}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def test_sdist_installs_in_a_fresh_venv(tmp_path):
    if not MATURIN.exists():
        pytest.skip("maturin is not installed next to this Python")
    run(MATURIN, "sdist", "--out", tmp_path / "dist", cwd=ROOT)
    (sdist,) = (tmp_path / "dist").glob("ferroloop-*.tar.gz")
    venv.create(tmp_path / "venv", with_pip=True)
    python = tmp_path / "venv" / "bin" / "python"
    # Nothing but the sdist and what pip fetches to build it (maturin, the crates).
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env["XDG_CACHE_HOME"] = str(tmp_path / "cache")  # the floor is built from scratch
    run(python, "-m", "pip", "install", "-q", sdist, env=env, cwd=tmp_path)

    version = run(python, "-m", "ferroloop", "--version", env=env, cwd=tmp_path)
    cargo_version = next(
        line.split('"')[1]
        for line in (ROOT / "Cargo.toml").read_text().splitlines()
        if line.startswith("version")
    )
    assert version.startswith(f"ferroloop {cargo_version} (release build")
    code = (
        "import asyncio, ferroloop\n"
        "async def main(): return type(asyncio.get_running_loop()).__module__\n"
        "print(ferroloop.run(main()))\n"
    )
    assert run(python, "-c", code, env=env, cwd=tmp_path).strip() == "ferroloop._loop"
    code = "import asyncio; print(asyncio.run(asyncio.sleep(0, 'ran')))"
    assert run(python, "-m", "ferroloop", "run", "-c", code, env=env, cwd=tmp_path) == "ran\n"
    code = (
        "from importlib.metadata import entry_points\n"
        "from ferroloop.bench import floor\n"
        "print([e.value for e in entry_points(group='pytest11')])\n"
        "print(floor.build())\n"
    )
    out = run(python, "-c", code, env=env, cwd=tmp_path)
    assert "ferroloop.pytest_plugin" in out
    assert "available=True" in out, out  # the floor builds from the installed package
