"""``python -m ferroloop run``: real child processes running unmodified programs.

Each program reports what it saw (the loop classes asyncio gave it, ``sys.argv``, ...) as one JSON
line; the same program run by plain ``python`` is the reference for argv, exit status, tracebacks
and Ctrl+C.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import urllib.request

import pytest

pytestmark = pytest.mark.ferroloop_only

TIMEOUT = 60

#: A program that reports the classes of the loops asyncio makes through every public route.
REPORTER = textwrap.dedent(
    """\
    import asyncio, json, sys, warnings

    async def running():
        return type(asyncio.get_running_loop()).__module__

    def get_event_loop():
        # 3.10-3.13 create a loop here (with a DeprecationWarning on 3.12+); 3.14+ raise.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            try:
                loop = asyncio.get_event_loop()
            except RuntimeError:
                return None
        asyncio.set_event_loop(None)
        loop.close()
        return type(loop).__module__

    # First: once a loop was set (asyncio.run sets and unsets one), it creates none.
    seen = {"get_event_loop": get_event_loop()}
    seen["run"] = asyncio.run(running())
    loop = asyncio.new_event_loop()
    seen["new_event_loop"] = type(loop).__module__
    loop.close()
    if sys.version_info >= (3, 11):
        with asyncio.Runner() as runner:
            seen["Runner"] = runner.run(running())
    print(json.dumps({
        "loops": seen,
        "argv": sys.argv,
        "path0": sys.path[0],
        "name": __name__,
        "file": globals().get("__file__"),
        "main_is_this": sys.modules["__main__"].__dict__ is globals(),
    }))
    if sys.argv[1:2] == ["exit"]:
        sys.exit(int(sys.argv[2]))
    if sys.argv[1:2] == ["raise"]:
        def deep():
            raise ValueError("raised by the program")
        deep()
    """
)


def ferroloop_run(*args, cwd, python_flags=(), **kwargs):
    return subprocess.run(
        [sys.executable, *python_flags, "-m", "ferroloop", "run", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env=_env(),
        **kwargs,
    )


def plain_python(*args, cwd):
    return subprocess.run(
        [sys.executable, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env=_env(),
    )


def _env():
    env = dict(os.environ)
    env.pop("PYTHONWARNINGS", None)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def report(proc):
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    assert lines, f"no report; stdout={proc.stdout!r} stderr={proc.stderr!r}"
    return json.loads(lines[-1])


def assert_all_ferroloop(loops):
    expected_get_event_loop = None if sys.version_info >= (3, 14) else "ferroloop._loop"
    assert loops.pop("get_event_loop") == expected_get_event_loop
    assert loops and set(loops.values()) == {"ferroloop._loop"}, loops


@pytest.fixture
def program(tmp_path):
    path = tmp_path / "program.py"
    path.write_text(REPORTER)
    return path


def test_script_runs_on_ferroloop_with_its_own_argv_and_path(tmp_path, program):
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    proc = ferroloop_run(str(program), "a", "--flag", cwd=elsewhere)
    assert proc.returncode == 0, proc.stderr
    seen = report(proc)
    reference = report(plain_python(str(program), "a", "--flag", cwd=elsewhere))
    assert reference["loops"]["run"] == "asyncio.unix_events"  # the program is not rigged
    assert_all_ferroloop(seen["loops"])
    for key in ("argv", "path0", "name", "file", "main_is_this"):
        assert seen[key] == reference[key], key
    assert seen["argv"] == [str(program), "a", "--flag"]
    assert seen["path0"] == str(tmp_path)
    assert seen["main_is_this"] is True


def test_module_with_arguments(tmp_path):
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "tool.py").write_text(REPORTER)
    proc = ferroloop_run("-m", "pkg.tool", "x", "-m", "y", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    seen = report(proc)
    reference = report(plain_python("-m", "pkg.tool", "x", "-m", "y", cwd=tmp_path))
    assert_all_ferroloop(seen["loops"])
    for key in ("argv", "path0", "name", "file", "main_is_this"):
        assert seen[key] == reference[key], key
    assert seen["argv"] == [str(package / "tool.py"), "x", "-m", "y"]


def test_code_string(tmp_path):
    proc = ferroloop_run("-c", REPORTER, "first", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    seen = report(proc)
    reference = report(plain_python("-c", REPORTER, "first", cwd=tmp_path))
    assert_all_ferroloop(seen["loops"])
    for key in ("argv", "path0", "name", "file", "main_is_this"):
        assert seen[key] == reference[key], key
    assert seen["argv"] == ["-c", "first"]


@pytest.mark.parametrize("status", [0, 3, 255])
def test_exit_status_is_the_programs(tmp_path, program, status):
    proc = ferroloop_run(str(program), "exit", str(status), cwd=tmp_path)
    assert proc.returncode == status, proc.stderr


def test_uncaught_exception_traceback_starts_in_the_program(tmp_path, program):
    proc = ferroloop_run(str(program), "raise", cwd=tmp_path)
    reference = plain_python(str(program), "raise", cwd=tmp_path)
    assert proc.returncode == reference.returncode == 1
    assert proc.stderr == reference.stderr
    assert proc.stderr.startswith(f'Traceback (most recent call last):\n  File "{program}"')
    assert "ValueError: raised by the program" in proc.stderr
    assert "ferroloop" not in proc.stderr


def test_ctrl_c_ends_the_program_as_under_python(tmp_path):
    program = tmp_path / "server.py"
    program.write_text(
        textwrap.dedent(
            """\
            import asyncio, sys
            async def main():
                print(type(asyncio.get_running_loop()).__module__, flush=True)
                await asyncio.Event().wait()
            asyncio.run(main())
            """
        )
    )
    results = []
    for argv in (["-m", "ferroloop", "run", str(program)], [str(program)]):
        proc = subprocess.Popen(
            [sys.executable, *argv],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=_env(),
        )
        try:
            first = proc.stdout.readline()  # the loop is running
            proc.send_signal(signal.SIGINT)
            _, err = proc.communicate(timeout=TIMEOUT)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
        results.append((first.strip(), proc.returncode, err))
    (loop, status, err), (reference_loop, reference_status, _) = results
    assert loop == "ferroloop._loop" and reference_loop == "asyncio.unix_events"
    assert status == reference_status == -signal.SIGINT
    assert "KeyboardInterrupt" in err


def test_print_loop_reports_the_running_loop_class(tmp_path, program):
    proc = ferroloop_run("--print-loop", str(program), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "ferroloop run: event loop ferroloop.Loop is running" in proc.stderr
    assert proc.stderr.count("is running") == 1  # once per class


def test_print_loop_names_a_loop_the_program_chose_itself(tmp_path):
    code = "import asyncio; asyncio.run(asyncio.sleep(0), loop_factory=asyncio.SelectorEventLoop)"
    if sys.version_info < (3, 12):
        code = "import asyncio; asyncio.SelectorEventLoop().run_until_complete(asyncio.sleep(0))"
    proc = ferroloop_run("--print-loop", "-c", code, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "event loop asyncio.unix_events._UnixSelectorEventLoop is running" in proc.stderr


def test_no_warning_on_the_programs_behalf(tmp_path, program):
    """Under -W error (policy deprecations are errors on 3.14+), run itself warns nothing."""
    proc = ferroloop_run(str(program), cwd=tmp_path, python_flags=("-W", "error"))
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    assert_all_ferroloop(report(proc)["loops"])


def test_usage_errors(tmp_path):
    missing = ferroloop_run("no_such_file.py", cwd=tmp_path)
    reference = plain_python("no_such_file.py", cwd=tmp_path)
    assert missing.returncode == reference.returncode == 2
    assert "no_such_file.py" in missing.stderr
    no_module = ferroloop_run("-m", "no_such_module_xyz", cwd=tmp_path)
    assert no_module.returncode == 1
    assert "No module named no_such_module_xyz" in no_module.stderr
    nothing = ferroloop_run(cwd=tmp_path)
    assert nothing.returncode == 2 and "usage:" in nothing.stderr


def test_uvicorn_default_loop_serves_a_request_on_ferroloop(tmp_path):
    pytest.importorskip("uvicorn")
    (tmp_path / "app.py").write_text(
        textwrap.dedent(
            """\
            import asyncio

            async def app(scope, receive, send):
                if scope["type"] != "http":
                    return
                body = type(asyncio.get_running_loop()).__module__.encode()
                await send({"type": "http.response.start", "status": 200, "headers": []})
                await send({"type": "http.response.body", "body": body})
            """
        )
    )
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)  # connections wait in the backlog until uvicorn accepts them
    port = listener.getsockname()[1]
    fd = listener.fileno()
    server = subprocess.Popen(
        [sys.executable, "-m", "ferroloop", "run", "-m", "uvicorn", "app:app", "--fd", str(fd)],
        cwd=tmp_path,
        pass_fds=[fd],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
    )
    listener.close()
    try:
        for line in server.stderr:  # uvicorn logs this once it serves the socket
            if "Uvicorn running" in line:
                break
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=TIMEOUT) as response:
            body = response.read().decode()
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.communicate(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            server.kill()
            server.communicate()
    assert body == "ferroloop._loop"
