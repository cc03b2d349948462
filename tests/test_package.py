"""What a user meets first: the package's version, its public names, ``repr`` of a loop."""

import subprocess
import sys

import pytest

ferroloop = pytest.importorskip("ferroloop", reason="ferroloop is not importable")

pytestmark = pytest.mark.ferroloop_only


def test_repr_names_ferroloop():
    loop = ferroloop.new_event_loop()
    try:
        assert repr(loop) == "<ferroloop.Loop running=False closed=False debug=False>"

        class Custom(ferroloop.Loop):
            pass

        custom = Custom()
        try:
            assert repr(custom).startswith(f"<{__name__}.{Custom.__qualname__} running=False")
        finally:
            custom.close()
    finally:
        loop.close()


def test_dir_shows_the_public_api():
    assert dir(ferroloop) == sorted(ferroloop.__all__)
    assert all(not name.startswith("_") or name == "__version__" for name in dir(ferroloop))
    for name in ferroloop.__all__:
        assert hasattr(ferroloop, name)


def test_version_is_the_distributions():
    from importlib.metadata import version

    assert ferroloop.__version__ == version("ferroloop")
    done = subprocess.run(
        [sys.executable, "-m", "ferroloop", "--version"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"ferroloop {ferroloop.__version__} (")


def test_import_brings_in_little_beyond_asyncio():
    # ``import ferroloop`` in a program that has imported asyncio adds ferroloop's own modules
    # and the interpreter check's; the metrics' dataclasses come on first use, and typing
    # (which asyncio no longer imports from 3.15) only for type checkers.
    code = (
        "import asyncio, sys\n"
        "before = set(sys.modules)\n"
        "import ferroloop\n"
        "print(' '.join(sorted(set(sys.modules) - before)))\n"
        "ferroloop.LoopMetrics, ferroloop.new_event_loop().metrics()\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    added = {m for m in done.stdout.split() if m.partition(".")[0] != "ferroloop"}
    assert added <= {"__future__", "_interpreters", "_xxsubinterpreters"}, added
