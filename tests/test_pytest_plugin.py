"""The pytest plugin (``pytest --ferroloop``): sample pytest-asyncio and anyio suites, run by
pytest in a child process, record the module of every running loop they see.

With ``--ferroloop`` every record must be ferroloop's; without it none may be (so the sample tests
do observe the loop, and the plugin does nothing unless enabled).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.ferroloop_only

TIMEOUT = 120

RECORD = textwrap.dedent(
    """\
    import asyncio, os

    def record(what):
        loop = asyncio.get_running_loop()
        with open(os.environ["LOOP_LOG"], "a") as log:
            log.write(f"{what} {type(loop).__module__}\\n")
    """
)

PYTEST_ASYNCIO_SUITE = {
    "_record.py": RECORD,
    "pytest.ini": "[pytest]\nasyncio_default_fixture_loop_scope = function\n",
    "test_sample_asyncio.py": textwrap.dedent(
        """\
        import asyncio
        import pytest
        import pytest_asyncio
        from _record import record

        @pytest_asyncio.fixture
        async def fixture_loop():
            record("fixture")
            yield

        @pytest.mark.asyncio
        async def test_function_scope(fixture_loop):
            record("function")
            await asyncio.sleep(0)

        @pytest.mark.asyncio(loop_scope="module")
        async def test_module_scope():
            record("module")

        class TestClass:
            @pytest.mark.asyncio(loop_scope="class")
            async def test_class_scope(self):
                record("class")

        def test_asyncio_run_in_a_sync_test():
            async def main():
                record("asyncio.run")
            asyncio.run(main())
        """
    ),
}

#: A project that picks its own loop factory through pytest-asyncio's hook (1.x).
PYTEST_ASYNCIO_HOOK_SUITE = {
    "_record.py": RECORD,
    "pytest.ini": "[pytest]\nasyncio_default_fixture_loop_scope = function\n",
    "conftest.py": textwrap.dedent(
        """\
        import asyncio

        def pytest_asyncio_loop_factories(config, item):
            return {"selector": asyncio.SelectorEventLoop}
        """
    ),
    "test_sample_hook.py": textwrap.dedent(
        """\
        import pytest
        from _record import record

        @pytest.mark.asyncio
        async def test_default_factory():
            record("hook")

        @pytest.mark.asyncio(loop_factories=["selector"])
        async def test_selected_by_name():
            record("hook-named")
        """
    ),
}

ANYIO_SUITE = {
    "_record.py": RECORD,
    "conftest.py": textwrap.dedent(
        """\
        import pytest

        @pytest.fixture
        def anyio_backend():
            return "asyncio"
        """
    ),
    "test_sample_anyio.py": textwrap.dedent(
        """\
        import anyio
        import pytest
        from _record import record

        @pytest.fixture
        async def anyio_fixture():
            record("anyio-fixture")
            yield

        @pytest.mark.anyio
        async def test_anyio(anyio_fixture):
            record("anyio")
            async with anyio.create_task_group() as tg:
                tg.start_soon(anyio.sleep, 0)
        """
    ),
}


def run_suite(tmp_path, files, *options, env_extra=None):
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    log = tmp_path / "loops.log"
    env = dict(os.environ, LOOP_LOG=str(log), **(env_extra or {}))
    env.pop("PYTEST_ADDOPTS", None)
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-v", *options],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env=env,
    )
    records = log.read_text().split("\n") if log.exists() else []
    log.unlink(missing_ok=True)
    return proc, [line.split() for line in records if line]


def loops_by_test(records):
    return {what: module for what, module in records}


@pytest.fixture(scope="module", autouse=True)
def _plugins_present():
    pytest.importorskip("pytest_asyncio")
    pytest.importorskip("anyio")


def test_pytest_asyncio_suite_runs_on_ferroloop(tmp_path):
    proc, records = run_suite(tmp_path, PYTEST_ASYNCIO_SUITE, "--ferroloop")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "every asyncio event loop is ferroloop" in proc.stdout
    seen = loops_by_test(records)
    assert set(seen) == {"fixture", "function", "module", "class", "asyncio.run"}, records
    assert set(seen.values()) == {"ferroloop._loop"}, records


def test_without_the_option_the_plugin_does_nothing(tmp_path):
    proc, records = run_suite(tmp_path, PYTEST_ASYNCIO_SUITE)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "every asyncio event loop is ferroloop" not in proc.stdout
    seen = loops_by_test(records)
    assert len(seen) == 5 and "ferroloop._loop" not in seen.values(), records


def test_a_projects_own_loop_factories_become_ferroloop(tmp_path):
    proc, records = run_suite(tmp_path, PYTEST_ASYNCIO_HOOK_SUITE, "--ferroloop")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert loops_by_test(records) == {"hook": "ferroloop._loop", "hook-named": "ferroloop._loop"}
    proc, records = run_suite(tmp_path, PYTEST_ASYNCIO_HOOK_SUITE)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert set(loops_by_test(records).values()) == {"asyncio.unix_events"}, records


def test_anyio_suite_runs_on_ferroloop(tmp_path):
    proc, records = run_suite(tmp_path, ANYIO_SUITE, "--ferroloop")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    seen = loops_by_test(records)
    assert seen == {"anyio-fixture": "ferroloop._loop", "anyio": "ferroloop._loop"}, records
    proc, records = run_suite(tmp_path, ANYIO_SUITE)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert set(loops_by_test(records).values()) == {"asyncio.unix_events"}, records


def test_explicit_plugin_option_without_autoload(tmp_path):
    """Where plugins are not auto-loaded: ``-p ferroloop.pytest_plugin --ferroloop``."""
    proc, records = run_suite(
        tmp_path,
        PYTEST_ASYNCIO_SUITE,
        "-p",
        "pytest_asyncio.plugin",
        "-p",
        "ferroloop.pytest_plugin",
        "--ferroloop",
        env_extra={"PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert set(loops_by_test(records).values()) == {"ferroloop._loop"}, records
