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
